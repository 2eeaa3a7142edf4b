"""`ftjax.predict` on finished runs: a tiny-BERT 3-class classification on CSV files and a
sentence-pair regression on JSONL, trained once per session (shared with test_evaluate.py), and a
tiny random ViT trained 2 steps on an image folder. Predictions equal the model's own outputs on
the same inputs, decoded to the run's label names or the targets' units; every bad input is one
clear error that leaves an existing output file as it was; the token-classification, QA and
multi-label decoders give well-formed predictions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_fixtures import REPO, cli_env, small_config, tiny_bert  # noqa: F401  (pytest fixtures)

from ftjax import inference, inputs, predict, train
from ftjax.data.tokenize import TextEncoder

WORDS = {
    "neg": ["bad", "awful", "dull", "boring", "poor"],
    "neutral": ["table", "chair", "paper", "window", "door"],
    "pos": ["great", "fine", "lovely", "superb", "good"],
}
FILLER = ["the", "a", "film", "was", "it", "and", "very"]
ONE_PHASE = (dict(name="all", trainable="all", lr=2e-3),)


def _sentence(rng, label: str) -> str:
    words = list(rng.choice(WORDS[label], 2)) + list(rng.choice(FILLER, rng.integers(1, 5)))
    return " ".join(rng.permutation(words))


def write_reviews(path: Path, n: int, seed: int) -> Path:
    """A CSV of `n` texts with labels neg / neutral / pos and an id column the readers ignore."""
    rng = np.random.default_rng(seed)
    lines = ["id,review,sentiment"]
    for i in range(n):
        label = ["neg", "neutral", "pos"][i % 3]
        lines.append(f"{i},{_sentence(rng, label)},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_pairs(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    words = ["red", "blue", "green", "cat", "dog", "car", "sun", "rain"]
    rows = []
    for i in range(n):
        a, b = rng.choice(words, 4), rng.choice(words, 4)
        score = round(10 * len(set(a) & set(b)) / 4 + 0.1 * (i % 7), 3)
        rows.append({"s1": " ".join(a), "s2": " ".join(b), "score": score})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train(config, workdir: Path) -> Path:
    if not (workdir / "results.json").exists():
        shutil.rmtree(workdir, ignore_errors=True)
        train.run(config, workdir)
    return workdir


@pytest.fixture(scope="session")
def text_runs(tiny_bert, tmp_path_factory) -> dict[str, Path]:
    """Finished runs at fixed paths (any module using the fixture shares them): 'classification'
    (train/validation/test CSVs) and 'regression' (sentence pairs, explicit test file), with the
    data files beside them."""
    root = tmp_path_factory.getbasetemp() / "predict_runs"
    root.mkdir(exist_ok=True)
    files = {
        "train.csv": write_reviews(root / "train.csv", 96, 0),
        "validation.csv": write_reviews(root / "validation.csv", 24, 1),
        "test.csv": write_reviews(root / "test.csv", 30, 2),
        "pairs.jsonl": write_pairs(root / "pairs.jsonl", 64, 0),
        "pairs_test.jsonl": write_pairs(root / "pairs_test.jsonl", 20, 1),
    }
    c = small_config(tiny_bert, root / "tfds", plan__phases=ONE_PHASE)
    c.data.name, c.data.path = "csv", str(files["train.csv"])
    c.data.validation_path, c.data.test_path = str(files["validation.csv"]), str(files["test.csv"])
    c.data.text_key, c.data.label_key = "review", "sentiment"
    c.data.eval_examples = None
    c.train.steps, c.train.eval_batch_size = 6, 16
    c.train.eval_every_steps = c.train.checkpoint_every_steps = 0  # at the end only: quick
    out = {"classification": _train(c, root / "classification")}
    c = small_config(tiny_bert, root / "tfds", plan__phases=ONE_PHASE)
    c.data.name, c.data.path = "csv", str(files["pairs.jsonl"])
    c.data.test_path = str(files["pairs_test.jsonl"])
    c.data.text_key, c.data.text_pair_key, c.data.label_key = "s1", "s2", "score"
    c.data.eval_examples = None
    c.train.steps, c.train.eval_batch_size = 4, 16
    c.train.eval_every_steps = c.train.checkpoint_every_steps = 0
    out["regression"] = _train(c, root / "regression")
    return {**out, **files, "root": root}


# ----------------------------------------------------------------------------- helpers


def _model_logits(run: inference.Run, texts, pairs=None) -> np.ndarray:
    """The model's own logits, every input padded to max_length (predict pads to buckets)."""
    import jax

    encoder = TextEncoder(run.preprocessing["tokenizer_file"], run.preprocessing["max_length"])
    examples = [encoder.encode(t, pairs[i] if pairs else None) for i, t in enumerate(texts)]
    batch = encoder.collate(examples)
    batch = {k: batch[k] for k in run.model.input_keys}
    apply = jax.jit(lambda b: run.model.apply(run.params, run.model_state, b, train=False)[0])
    return np.asarray(jax.device_get(apply(batch)))


def _csv_texts(path: Path, column: str = "review") -> list[str]:
    import csv

    with open(path, newline="") as f:
        return [row[column] for row in csv.DictReader(f)]


def _predict_file(workdir, path, **keys):
    run = inference.load_run(workdir, finished=True)
    data = run.record["data"]
    items = inputs.read_inputs(
        path,
        kind=run.kind,
        task=run.task.name,
        text_key=keys.get("text_key", data["text_key"]),
        text_pair_key=data["text_pair_key"],
    )
    return predict.predict(run, items, batch_size=keys.get("batch_size", 8))


# ----------------------------------------------------------------------------- text runs


def test_classification_predictions_are_the_models_argmax_with_names(text_runs):
    run = inference.load_run(text_runs["classification"], finished=True)
    assert run.task.label_names == ("neg", "neutral", "pos")
    items = inputs.read_inputs(
        text_runs["test.csv"], kind="text", task="classification", text_key="review"
    )
    rows = predict.predict(run, items, batch_size=8)  # 30 rows: the last batch is padded
    texts = _csv_texts(text_runs["test.csv"])
    logits = _model_logits(run, texts)
    assert [r["index"] for r in rows] == list(range(len(texts)))
    assert [r["label"] for r in rows] == [run.task.label_names[i] for i in logits.argmax(-1)]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    scores = np.asarray([[r["scores"][n] for n in run.task.label_names] for r in rows])
    np.testing.assert_allclose(scores, probs, atol=1e-5)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-9)


def test_regression_predictions_are_in_the_targets_units(text_runs):
    run = inference.load_run(text_runs["regression"], finished=True)
    task = run.task
    assert task.target_std > 1.0, "the targets are in 0..10: normalisation must be undone"
    rows = _predict_file(text_runs["regression"], text_runs["pairs_test.jsonl"])
    records = [json.loads(line) for line in text_runs["pairs_test.jsonl"].read_text().splitlines()]
    logits = _model_logits(run, [r["s1"] for r in records], [r["s2"] for r in records])
    expected = logits[:, 0].astype(np.float64) * task.target_std + task.target_mean
    np.testing.assert_allclose([r["prediction"] for r in rows], expected, rtol=1e-5, atol=1e-5)
    assert [r["index"] for r in rows] == list(range(len(records)))


def test_cli_writes_one_json_line_per_input_and_bad_input_keeps_the_file(text_runs, tmp_path):
    workdir = text_runs["classification"]
    out = tmp_path / "predictions.jsonl"
    command = [sys.executable, "-m", "ftjax.predict", f"--workdir={workdir}", "--batch_size=16"]
    done = subprocess.run(
        [*command, f"--input={text_runs['test.csv']}", f"--output={out}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=cli_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = out.read_text().splitlines()
    assert len(lines) == 30 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1] == f"30 predictions written to {out}"
    assert all(json.loads(line)["label"] in ("neg", "neutral", "pos") for line in lines)
    before = out.read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text\n1,hello\n")
    failed = subprocess.run(
        [*command, f"--input={bad}", f"--output={out}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=cli_env(),
        timeout=300,
    )
    assert failed.returncode == 1
    message = failed.stderr.strip().splitlines()
    assert len(message) == 1 and "no column 'review'" in message[0], failed.stderr[-2000:]
    assert "['id', 'text']" in message[0] and "--text_key" in message[0]
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "predictions.jsonl"]


def _bad_inputs(tmp_path: Path, runs) -> dict[str, tuple[Path | str, str]]:
    """input -> (path, a part of its error)."""
    (tmp_path / "images" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "cat" / "a.png")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("id,review,sentiment\n")
    (tmp_path / "columns.jsonl").write_text('{"text": "hi"}\n')
    (tmp_path / "images.txt").write_text("cat/a.png\n")
    return {
        "image folder": (tmp_path / "images", "is a folder, but the run's model is a text model"),
        "image list": (tmp_path / "images.txt", "is a list of images"),
        "missing column": (tmp_path / "columns.jsonl", "no column 'review'"),
        "empty": (tmp_path / "empty.csv", "is empty"),
        "header only": (tmp_path / "header.csv", "has no rows"),
        "missing": (tmp_path / "nothing.csv", "does not exist"),
    }


def test_every_bad_input_is_one_clear_error_and_writes_nothing(text_runs, tmp_path):
    workdir = text_runs["classification"]
    out = tmp_path / "kept.jsonl"
    out.write_text("earlier predictions\n")
    for what, (path, message) in _bad_inputs(tmp_path, text_runs).items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            predict.predict_file(workdir, path, out)
        assert out.read_text() == "earlier predictions\n", what
    unfinished = tmp_path / "unfinished"
    shutil.copytree(workdir, unfinished)
    (unfinished / "results.json").unlink()
    with pytest.raises(inference.InferenceError, match="is not a finished run"):
        predict.predict_file(unfinished, text_runs["test.csv"], out)
    with pytest.raises(inference.InferenceError, match="holds no inference/inference.json"):
        predict.predict_file(tmp_path, text_runs["test.csv"], out)
    with pytest.raises(inference.InferenceError, match="does not exist"):
        predict.predict_file(tmp_path / "no_run", text_runs["test.csv"], out)
    assert out.read_text() == "earlier predictions\n"
    predict.predict_file(workdir, text_runs["test.csv"], out, batch_size=64)
    assert len(out.read_text().splitlines()) == 30


# ----------------------------------------------------------------------------- other tasks


def _untrained(tiny_bert, task, pooling: str, doc_stride: int = 8) -> inference.Run:
    """A Run of the tiny BERT with a fresh head for `task` (no training: the decoders' shapes)."""
    from ftjax.pretrained.load import load_pretrained

    p = load_pretrained(tiny_bert, task.output_size, pooling=pooling)
    preprocessing = {**p.preprocessing, "max_length": 24}
    record = {"data": {"text_key": "text", "text_pair_key": None, "doc_stride": doc_stride}}
    return inference.Run(
        Path("."), p.model, p.params, p.state, task, preprocessing, record, "best", 0
    )


def test_token_classification_qa_and_multi_label_decode_to_names(tiny_bert, tmp_path):
    from ftjax import tasks

    conll = tmp_path / "words.conll"
    long = " ".join(f"w{i}" for i in range(40))  # longer than max_length: the tail has no tag
    conll.write_text(
        "-DOCSTART- O\n\nJohn B-PER\nlives O\nin O\nParis B-LOC\n\n"
        + "\n".join(long.split())
        + "\n"
    )
    tagger = tasks.TokenClassification(("O", "B-PER", "I-PER", "B-LOC", "I-LOC"))
    items = inputs.read_inputs(conll, kind="text", task="token_classification")
    rows = predict.predict(_untrained(tiny_bert, tagger, "tokens"), items, batch_size=4)
    assert [r["index"] for r in rows] == [0, 1]
    assert rows[0]["words"] == ["John", "lives", "in", "Paris"]
    assert all(t in tagger.tag_names for t in rows[0]["tags"])
    assert rows[1]["tags"][-1] is None and rows[1]["tags"][0] is not None
    for r in rows:
        for e in r["entities"]:
            assert e["text"] == " ".join(r["words"][e["start"] : e["end"]])
            assert r["tags"][e["start"]].endswith(e["type"])

    context = " ".join(f"The river number {i} flows into the sea." for i in range(8))
    squad = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": context,
                        "qas": [
                            {"id": "q1", "question": "Where does it flow?"},
                            {"id": "q2", "question": "Which river?", "answers": []},
                        ],
                    }
                ]
            }
        ]
    }
    (tmp_path / "questions.json").write_text(json.dumps(squad))
    items = inputs.read_inputs(tmp_path / "questions.json", kind="text", task="extractive_qa")
    rows = predict.predict(_untrained(tiny_bert, tasks.ExtractiveQA(), "tokens"), items)
    assert [r["id"] for r in rows] == ["q1", "q2"]
    for r in rows:  # several windows per question (max_length 24): the best span over them
        assert r["answer"] == context[r["start"] : r["start"] + len(r["answer"])] and r["answer"]

    (tmp_path / "texts.csv").write_text("text\nJohn lives in Paris\nnothing here\n")
    labels = tasks.MultiLabel(("LOC", "PER", "ORG"), threshold=0.5)
    items = inputs.read_inputs(tmp_path / "texts.csv", kind="text", task="multi_label")
    rows = predict.predict(_untrained(tiny_bert, labels, "mean"), items)
    for r in rows:
        assert list(r["scores"]) == ["LOC", "PER", "ORG"]
        assert r["labels"] == [n for n, p in r["scores"].items() if p > 0.5]


# ----------------------------------------------------------------------------- an image run


def _image_folder(root: Path, per_class: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["dark", "light"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = 40 + 150 * c
            pixels = np.clip(base + rng.integers(-30, 30, (28, 28, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def image_run(tmp_path_factory) -> Path:
    """A finished ViT run at a fixed path (shared like `text_runs`), its images in ../images."""
    from arch_checkpoints import save_vit

    root = tmp_path_factory.getbasetemp() / "predict_image_run"
    if not (root / "vit").exists():
        save_vit(root / "vit")
    c = small_config(root / "vit", root / "tfds", plan__phases=ONE_PHASE)
    c.data.name, c.data.path = "image_folder", str(_image_folder(root / "images"))
    c.data.eval_examples = None
    c.train.steps, c.train.batch_size, c.train.eval_batch_size = 2, 4, 4
    c.train.eval_every_steps = c.train.checkpoint_every_steps = 0
    return _train(c, root / "run")


def test_an_image_run_predicts_on_a_folder_and_a_list_and_refuses_text(image_run, tmp_path):
    images = image_run.parent / "images"
    rows = _predict_file(image_run, images)
    files = sorted(str(p) for p in images.rglob("*.png"))
    assert [r["path"] for r in rows] == files
    assert all(r["label"] in ("dark", "light") and len(r["scores"]) == 2 for r in rows)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{files[3]}\n\n{files[15]}\n")
    listed = _predict_file(image_run, listing)
    assert [r["path"] for r in listed] == [files[3], files[15]]
    for r in listed:  # the same image gives the same prediction in any batch
        same = rows[files.index(r["path"])]
        assert r["label"] == same["label"]
        np.testing.assert_allclose(
            list(r["scores"].values()), list(same["scores"].values()), atol=1e-5
        )
    (tmp_path / "texts.csv").write_text("text\nhello\n")
    with pytest.raises(inputs.InputError, match="the run's model is an image model"):
        _predict_file(image_run, tmp_path / "texts.csv")
    (tmp_path / "bad.txt").write_text("not an image\n")
    with pytest.raises(inputs.InputError, match="should list image files"):
        _predict_file(image_run, tmp_path / "bad.txt")
