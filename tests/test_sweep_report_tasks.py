"""The sweep report ranks variants by the metric their task picks checkpoints by (results.json's
`best_metric`), lower-is-better metrics included, and reads validation curves of that metric."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from ftjax import phases

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import sweep_report  # noqa: E402


def _run(tmp_path: Path, variant: str, seed: int, rmse: float) -> sweep_report.RunRecord:
    workdir = tmp_path / variant / f"seed_{seed}"
    workdir.mkdir(parents=True)
    metrics = {"rmse": rmse, "pearson": 1 - rmse, "loss": rmse**2, "count": 10}
    (workdir / "results.json").write_text(
        json.dumps(
            {
                "task": "regression",
                "best_metric": "rmse",
                "higher_is_better": False,
                "metrics": {"validation": metrics, "test": metrics},
                "test": metrics,
                "validation": metrics,
                "best_step": 4,
                "steps": 4,
                "wall_s": 1.0,
            }
        )
    )
    rows = [{"step": s, "split": "validation", **metrics, "rmse": rmse + 1 / s} for s in (2, 4)]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = phases.resolve_plan(
        phases.Plan((phases.Phase("all", ("head",), 1e-3, steps=4),)), ("head",)
    )
    return sweep_report.RunRecord(variant, seed, workdir, plan, batch_size=8)


def test_a_lower_is_better_metric_ranks_lowest_first(tmp_path):
    records = [
        _run(tmp_path, "worse", 0, 0.4),
        _run(tmp_path, "better", 0, 0.1),
        _run(tmp_path, "better", 1, 0.2),
    ]
    for r in records:
        sweep_report.read_record(r)
    assert [s.variant for s in sweep_report.summarize(records)] == ["better", "worse"]
    assert records[0].curve == [(2, 0.9), (4, 0.65)]
    text = sweep_report.markdown(records, "Lee pairs", {"better": "b", "worse": "w"})
    assert "| test rmse | val rmse |" in text and "| 1 | better | 15.00 ± 7.07 |" in text
    sweep_report.write_csv(records, tmp_path / "results.csv")
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[1]["test_rmse"]) == 0.1 and "val_rmse" in rows[0]
