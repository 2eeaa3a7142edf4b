"""A sweep's results: results.csv, results.md and PNG plots, from the runs' workdirs.

Reads each run's results.json (final numbers) and metrics.jsonl (validation curve), and writes
into the sweep folder, for the metric the runs' task picks its best checkpoint by (results.json's
`best_metric`: accuracy for classification, entity F1 for NER, Pearson for regression, ...):
  results.csv          one row per finished run: variant, seed, val/test metric and loss, steps,
                       examples, wall time (columns val_<metric>, test_<metric>, ...)
  results.md           mean +- std per variant, best mean test metric first, and the runs still missing
  val_curves.png       the validation metric against training examples, one panel per variant, a
                       line per seed, phase boundaries dashed
  test_accuracy.png    the final test metric per variant: mean with +-1 std error bars, one dot per
                       seed (the file keeps its name whatever the metric)

Not here: running (experiments/sweep.py), plans (experiments/sweep_plans.py).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ftjax.phases import ResolvedPlan


def csv_fields(metric: str) -> tuple[str, ...]:
    return (
        "schedule",
        "seed",
        f"val_{metric}",
        "val_loss",
        f"test_{metric}",
        "test_loss",
        "best_step",
        "steps",
        "examples",
        "wall_s",
        "workdir",
    )


def metric_of(records: Sequence[RunRecord]) -> tuple[str, bool]:
    """(the best-checkpoint metric, whether higher is better) of the sweep's finished runs."""
    for r in records:
        if r.results is not None:
            return r.results.get("best_metric", "accuracy"), r.results.get("higher_is_better", True)
    return "accuracy", True


@dataclasses.dataclass
class RunRecord:
    """A run of the sweep with its plan and, once finished, its results and validation curve."""

    variant: str
    seed: int
    workdir: Path
    plan: ResolvedPlan
    batch_size: int
    results: dict[str, Any] | None = None
    curve: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (step, val metric)

    @property
    def finished(self) -> bool:
        return self.results is not None


@dataclasses.dataclass
class Summary:
    """Mean and sample std over a variant's finished seeds."""

    variant: str
    n: int
    test_mean: float
    test_std: float
    val_mean: float
    val_std: float
    steps: int
    wall_mean: float
    # From results.json "costs" (absent in runs older than it): the most params any phase
    # trains, the mean train step over the run (each phase's median, weighted by its length)
    # and the peak resident memory, means over seeds.
    trainable: int | None = None
    step_ms: float | None = None
    rss_mb: float | None = None


def read_record(record: RunRecord) -> RunRecord:
    """Fills `results` and `curve` from the workdir (left empty while the run is unfinished)."""
    results_file = record.workdir / "results.json"
    record.results = json.loads(results_file.read_text()) if results_file.exists() else None
    metric = (record.results or {}).get("best_metric", "accuracy")
    record.curve = validation_curve(record.workdir / "metrics.jsonl", metric)
    return record


def validation_curve(metrics_file: Path, metric: str = "accuracy") -> list[tuple[int, float]]:
    """(step, metric) of every validation row; a step logged twice (resumed run) keeps its last value."""
    if not metrics_file.exists():
        return []
    by_step: dict[int, float] = {}
    for line in metrics_file.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("split") == "validation":
                by_step[int(row["step"])] = float(row[metric])
    return sorted(by_step.items())


def summarize(records: Sequence[RunRecord]) -> list[Summary]:
    """Per-variant mean +- std of the finished runs' best-checkpoint metric, best mean test first."""
    metric, higher = metric_of(records)
    out = []
    for variant in dict.fromkeys(r.variant for r in records):
        done = [r for r in records if r.variant == variant and r.finished]
        if not done:
            continue
        test = [r.results["test"][metric] for r in done]
        val = [r.results["validation"][metric] for r in done]
        out.append(
            Summary(
                variant,
                len(done),
                float(np.mean(test)),
                _std(test),
                float(np.mean(val)),
                _std(val),
                done[0].results["steps"],
                float(np.mean([r.results["wall_s"] for r in done])),
                **_costs(done),
            )
        )
    return sorted(out, key=lambda s: -s.test_mean if higher else s.test_mean)


def _costs(done: Sequence[RunRecord]) -> dict[str, Any]:
    if not all("costs" in r.results for r in done):
        return {}
    phases = [r.results["costs"]["phases"] for r in done]
    lengths = {p.name: p.length for p in done[0].plan.phases}

    def mean_step(ph):
        timed = {n: v["step_s"] for n, v in ph.items() if v["step_s"] is not None}
        total = sum(lengths[n] for n in timed)
        return sum(lengths[n] * s for n, s in timed.items()) / total if total else math.nan

    return {
        "trainable": max(v["trainable_params"] for v in phases[0].values()),
        "step_ms": 1000 * float(np.mean([mean_step(ph) for ph in phases])),
        "rss_mb": float(np.mean([r.results["costs"]["peak_rss_mb"] for r in done])),
    }


def _std(xs: Sequence[float]) -> float:
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else math.nan


# ----------------------------------------------------------------------------- tables


def write_csv(records: Sequence[RunRecord], path: Path) -> Path:
    metric, _ = metric_of(records)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(csv_fields(metric))
        for r in records:
            if not r.finished:
                continue
            res = r.results
            w.writerow(
                [
                    r.variant,
                    r.seed,
                    f"{res['validation'][metric]:.6f}",
                    f"{res['validation']['loss']:.6f}",
                    f"{res['test'][metric]:.6f}",
                    f"{res['test']['loss']:.6f}",
                    res["best_step"],
                    res["steps"],
                    res["steps"] * r.batch_size,
                    res["wall_s"],
                    str(r.workdir),
                ]
            )
    return path


def _pm(mean: float, std: float, scale: float = 100.0) -> str:
    return f"{mean * scale:.2f}" + ("" if math.isnan(std) else f" ± {std * scale:.2f}")


def markdown(
    records: Sequence[RunRecord], title: str, descriptions: Mapping[str, str], preamble: str = ""
) -> str:
    """The results.md text: the per-variant table, what each variant is, unfinished runs."""
    summaries = summarize(records)
    metric, _ = metric_of(records)
    finished = sum(r.finished for r in records)
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble, ""]
    if metric == "accuracy":
        lines += [
            f"{finished} of {len(records)} runs finished. Accuracy in %, mean ± sample std over seeds; sorted by mean "
            "test accuracy. Validation accuracy is that of the best validation checkpoint, which is the one tested.",
            "",
            "| rank | schedule | test acc | test error | val acc | seeds | steps | wall s (mean) |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
    else:
        lines += [
            f"{finished} of {len(records)} runs finished. {metric} x 100, mean ± sample std over seeds; best mean "
            f"test {metric} first. Validation is that of the best validation checkpoint, which is the one tested.",
            "",
            f"| rank | schedule | test {metric} | val {metric} | seeds | steps | wall s (mean) |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
    costs = bool(summaries) and all(s.trainable is not None for s in summaries)
    if costs:
        lines[-2] += " trainable params | step ms (mean) | peak RSS MB |"
        lines[-1] += " ---: | ---: | ---: |"
    for i, s in enumerate(summaries, 1):
        error = f" {100 * (1 - s.test_mean):.2f} |" if metric == "accuracy" else ""
        cost = f" {s.trainable:,} | {s.step_ms:.0f} | {s.rss_mb:.0f} |" if costs else ""
        lines.append(
            f"| {i} | {s.variant} | {_pm(s.test_mean, s.test_std)} |{error} "
            f"{_pm(s.val_mean, s.val_std)} | {s.n} | {s.steps} | {s.wall_mean:.0f} |{cost}"
        )
    lines += ["", "## Schedules", ""]
    lines += [
        f"- **{name}**: {text}"
        for name, text in descriptions.items()
        if any(r.variant == name for r in records)
    ]
    missing = [f"{r.variant}/seed_{r.seed}" for r in records if not r.finished]
    if missing:
        lines += ["", "## Not finished", "", ", ".join(missing)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_val_curves(records: Sequence[RunRecord], path: Path) -> Path:
    """The validation metric vs training examples, a panel per variant, phase boundaries dashed."""
    plt = _pyplot()
    metric, _ = metric_of(records)
    variants = list(dict.fromkeys(r.variant for r in records))
    cols = min(5, len(variants))
    rows = math.ceil(len(variants) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.4 * cols, 2.8 * rows + 0.6), sharey=True, squeeze=False
    )
    accs = [a for r in records for _, a in r.curve]
    lo = min(accs, default=0.5)
    for ax, variant in zip(axes.flat, variants):
        runs = [r for r in records if r.variant == variant]
        plan, batch = runs[0].plan, runs[0].batch_size
        for phase in plan.phases[1:]:
            ax.axvline(phase.start * batch, color="k", ls="--", lw=0.7, alpha=0.5)
        for r in runs:
            if r.curve:
                steps, acc = zip(*r.curve)
                ax.plot(
                    np.asarray(steps) * batch,
                    acc,
                    marker="o",
                    ms=2.5,
                    lw=1.2,
                    label=f"seed {r.seed}",
                )
        ax.set_title(
            f"{variant} ({len(plan.phases)} phase{'s' if len(plan.phases) > 1 else ''})", fontsize=9
        )
        ax.set_xlim(0, plan.total_steps * batch)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(variants) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"validation {metric}", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("training examples", fontsize=8)
    axes.flat[0].set_ylim(max(0.0, lo - 0.02), 1.0 if not accs else min(1.0, max(accs) + 0.02))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=len(handles))
    fig.suptitle(f"Validation {metric} during training (dashed: phase boundaries)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_test_accuracy(records: Sequence[RunRecord], path: Path) -> Path:
    """The final test metric per variant: mean bar with +-1 std error bar, a dot per seed; best on top."""
    plt = _pyplot()
    metric, _ = metric_of(records)
    summaries = summarize(records)
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(summaries), 1) + 1.4))
    names = [s.variant for s in summaries][::-1]
    means = np.array([s.test_mean for s in summaries][::-1]) * 100
    stds = np.nan_to_num(np.array([s.test_std for s in summaries][::-1]) * 100)
    y = np.arange(len(names))
    ax.barh(y, means, xerr=stds, color="tab:blue", alpha=0.45, capsize=4, error_kw={"lw": 1.2})
    for i, name in enumerate(names):
        dots = [
            100 * r.results["test"][metric] for r in records if r.variant == name and r.finished
        ]
        ax.plot(dots, [i] * len(dots), "k.", ms=5)
        ax.text(means[i] + stds[i] + 0.3, i, f"{means[i]:.1f}", va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=9)
    values = [100 * r.results["test"][metric] for r in records if r.finished]
    if values:
        ax.set_xlim(max(0.0, min(values) - 5), min(100.0, max(values) + 4))
    ax.set_xlabel(f"test {metric} (x 100): mean ± std over seeds, dots = seeds")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Final test {metric} per schedule (best validation checkpoint)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_outputs(
    records: Sequence[RunRecord],
    sweep_dir: Path,
    *,
    title: str,
    descriptions: Mapping[str, str],
    preamble: str = "",
) -> list[Path]:
    """Reads every run and writes results.csv, results.md, val_curves.png, test_accuracy.png."""
    for r in records:
        read_record(r)
    out = [write_csv(records, sweep_dir / "results.csv")]
    (sweep_dir / "results.md").write_text(markdown(records, title, descriptions, preamble))
    out.append(sweep_dir / "results.md")
    out.append(plot_val_curves(records, sweep_dir / "val_curves.png"))
    if any(r.finished for r in records):
        out.append(plot_test_accuracy(records, sweep_dir / "test_accuracy.png"))
    return out
