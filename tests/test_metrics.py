"""MetricWriter on a resumed workdir: the rows a stopped run logged after the resumed step are
dropped (they are logged again), and TensorBoard is told to hide that run's later events."""

from __future__ import annotations

import json
from pathlib import Path

from train_fixtures import read_events

from ftjax.metrics import MetricWriter


def _rows(workdir: Path) -> list[tuple[int, str]]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["split"]) for r in map(json.loads, lines)]


def test_rows_after_the_resumed_step_are_dropped_and_tensorboard_purges_them(tmp_path):
    first = MetricWriter(tmp_path)
    for step in (3, 4, 6, 9, 10):
        first.write(step, "train", {"loss": 1.0 / step})
    first.write(6, "validation", {"accuracy": 0.5})
    first.write(6, "test", {"accuracy": 0.5})  # a finished run's end, written again at the end
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "split": "tra')  # the line a kill cut off

    resumed = MetricWriter(tmp_path, start_step=6)  # the checkpoint it resumes is step 6
    assert _rows(tmp_path) == [(3, "train"), (4, "train"), (6, "train"), (6, "validation")]
    resumed.write(9, "train", {"loss": 0.1})
    resumed.close()
    assert _rows(tmp_path)[-1] == (9, "train") and len(_rows(tmp_path)) == 5

    files = sorted(
        (tmp_path / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns
    )
    assert len(files) == 2
    purge = [e for e in read_events(files[-1]) if e.HasField("session_log")]
    assert purge and purge[0].step == 7 and purge[0].session_log.status == 1  # START at step 7
    assert not any(e.HasField("session_log") for e in read_events(files[0]))


def test_a_fresh_start_keeps_no_rows_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    w = MetricWriter(tmp_path)
    w.write(3, "train", {"loss": 0.5})
    w.close()
    MetricWriter(tmp_path, start_step=0).close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
