"""`ftjax.evaluate` on the finished runs of test_predict.py (shared, trained once per session):
the run's own test file gives results.json's test metrics exactly and leaves every run file as it
was; a file or folder is evaluated whole; labels map by name onto the run's label space (a file
with its rows in another order or only some of the classes, an image folder of one class, a
packaged dataset's tags in another order), an unseen label is an error naming it, data of the
other kind are refused, and an evaluation is not overwritten without --overwrite."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_predict import image_run, text_runs  # noqa: F401  (pytest fixtures)
from train_fixtures import REPO, cli_env, snapshot, tiny_bert  # noqa: F401  (pytest fixture)

from ftjax import evaluate, inference, inputs, predict, tasks
from ftjax.data import DataConfig, conll


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _run_files(workdir: Path) -> dict[str, tuple[int, bytes]]:
    return {k: v for k, v in snapshot(workdir).items() if not k.startswith("evaluations")}


def test_the_runs_own_test_files_give_results_json_exactly_and_touch_nothing(text_runs):
    for kind, test_file in (("classification", "test.csv"), ("regression", "pairs_test.jsonl")):
        workdir = text_runs[kind]
        before = _run_files(workdir)
        path, content = evaluate.run_evaluation(workdir, {"path": str(text_runs[test_file])})
        results = json.loads((workdir / "results.json").read_text())
        assert content["metrics"] == results["metrics"]["test"], kind
        assert path == workdir / "evaluations" / f"{Path(test_file).stem}-test-best.json"
        assert json.loads(path.read_text()) == content
        assert content["data"]["split"] == "test" and content["checkpoint"] == "best"
        assert _run_files(workdir) == before, f"{kind}: the run's own files changed"
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        evaluate.run_evaluation(text_runs["classification"], {"path": str(text_runs["test.csv"])})
    written = path.stat().st_mtime_ns
    evaluate.run_evaluation(
        text_runs["regression"], {"path": str(text_runs["pairs_test.jsonl"])}, overwrite=True
    )
    assert path.stat().st_mtime_ns > written


def test_labels_map_by_name_onto_the_runs_label_space(text_runs, tmp_path):
    workdir = text_runs["classification"]
    rows = _rows(text_runs["test.csv"])
    reordered = _write(tmp_path / "reordered.csv", rows[::-1])
    _, content = evaluate.run_evaluation(workdir, {"path": str(reordered)})
    metrics = content["metrics"]
    expected = json.loads((workdir / "results.json").read_text())["metrics"]["test"]
    assert {k: metrics[k] for k in ("accuracy", "macro_f1", "mcc", "count")} == {
        k: expected[k] for k in ("accuracy", "macro_f1", "mcc", "count")
    }
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    # Only two of the three classes, 'pos' first: names sorted from this file would be wrong ids.
    some = _write(tmp_path / "some.csv", [r for r in rows[::-1] if r["sentiment"] != "neg"])
    _, content = evaluate.run_evaluation(workdir, {"path": str(some)})
    run = inference.load_run(workdir, finished=True)
    items = inputs.read_inputs(some, kind="text", task="classification", text_key="review")
    predicted = [p["label"] for p in predict.predict(run, items)]
    truth = [r["sentiment"] for r in _rows(some)]
    assert content["metrics"]["count"] == len(truth) == 20
    assert content["metrics"]["accuracy"] == _agreement(predicted, truth)


def _agreement(predicted, truth) -> float:
    return sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)


def test_an_image_folder_is_evaluated_whole_in_the_runs_classes(image_run, tmp_path):
    images = image_run.parent / "images"
    only_light = tmp_path / "only_light"
    shutil.copytree(images / "light", only_light / "light")
    run = inference.load_run(image_run, finished=True)
    for folder, count in ((images, 20), (only_light, 10)):
        _, content = evaluate.run_evaluation(image_run, {"path": str(folder)}, overwrite=True)
        assert content["data"]["name"] == "image_folder"
        assert content["metrics"]["count"] == count  # the whole folder: nothing carved off
        items = inputs.read_inputs(folder, kind="image", task="classification")
        predicted = [p["label"] for p in predict.predict(run, items)]
        truth = [Path(it["path"]).parent.name for it in items]
        assert content["metrics"]["accuracy"] == _agreement(predicted, truth)
    with pytest.raises(ValueError, match="the run's model reads images but data.name='csv'"):
        evaluate.run_evaluation(image_run, {"path": str(tmp_path / "x.csv"), "name": "csv"})


def test_an_unseen_label_is_an_error_naming_it(text_runs, tmp_path):
    workdir = text_runs["classification"]
    rows = _rows(text_runs["test.csv"])
    rows[4]["sentiment"] = "angry"
    bad = _write(tmp_path / "angry.csv", rows)
    with pytest.raises(ValueError, match=r"labels \['angry'\] are not among the run's labels"):
        evaluate.run_evaluation(workdir, {"path": str(bad)})
    assert not (workdir / "evaluations" / "angry-test-best.json").exists()
    with pytest.raises(ValueError, match="the run is a classification run"):
        evaluate.run_evaluation(workdir, {"path": str(bad), "name": "conll"})
    with pytest.raises(ValueError, match="the run's model reads texts but data.name='image_f"):
        evaluate.run_evaluation(workdir, {"path": str(tmp_path), "name": "image_folder"})


def test_a_packaged_datasets_tags_map_by_name():
    order = tuple(reversed(conll.CONLL2003_TAGS))  # the run's tag ids differ from the data's
    config = DataConfig(name="conll2003")
    data = evaluate.read_split(config, "test", tasks.TokenClassification(order))
    gold = conll.read_conll(conll.conll2003_files()["test"])
    for i in (0, 1, 100):
        assert [order[t] for t in data.splits["test"][i]["label"]] == gold[i][1]
    without_misc = tuple(t for t in conll.CONLL2003_TAGS if "MISC" not in t)
    with pytest.raises(ValueError, match=r"tags \['B-MISC', 'I-MISC'\] are not among"):
        evaluate.read_split(config, "test", tasks.TokenClassification(without_misc))


def test_cli_prints_the_metrics_and_refuses_to_overwrite(text_runs):
    workdir = text_runs["classification"]
    command = [
        sys.executable,
        "-m",
        "ftjax.evaluate",
        f"--workdir={workdir}",
        f"--data.path={text_runs['validation.csv']}",
        "--name=cli",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env=cli_env(), timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    content = json.loads((workdir / "evaluations" / "cli.json").read_text())
    # best/ is the step validation picked, so the validation file gives its validation metrics
    assert content["metrics"] == results["metrics"]["validation"]
    assert f"accuracy {content['metrics']['accuracy']:.4f}" in done.stdout
    again = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env=cli_env(), timeout=300
    )
    assert again.returncode == 1
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "cli.json exists; pass --overwrite" in lines[0], again.stderr
