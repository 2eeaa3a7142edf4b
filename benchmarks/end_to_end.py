"""The default experiment end to end against PyTorch's reference recipe: one ratio from one run.

    python benchmarks/end_to_end.py [--torch-steps 40] [--threads 2] [--buckets] [--keep-run DIR]
        [--out benchmarks/results]
    python benchmarks/end_to_end.py --quick --out /tmp/e2e   # the `:quick` run, 4 torch steps (tests)

ftjax: `python -m ftjax.main --config=configs/minilm_rotten_tomatoes.py` in a subprocess with an
empty compilation cache; its wall time covers everything from start to results.json (loading,
compiling, training, every evaluation, the test split), and its test accuracy is read back.
`--keep-run DIR` copies that run's workdir to DIR (to predict, evaluate or export from it).

PyTorch: the reference recipe of ../shared/ASSETS.md: transformers' BertForSequenceClassification
on the same MiniLM folder, 3 epochs of full fine-tuning at batch 32, max length 64, AdamW lr 5e-5
(83.8% test there). Too long to run beside ftjax, so it is timed and extrapolated: `--torch-steps`
train steps on real shuffled train batches, each padded to its longest snippet (transformers'
dynamic padding), and `--torch-eval-batches` eval forwards on validation batches; the recipe is 3
epochs x 287 steps plus one validation pass per epoch and one test pass, at batch 32. Model
loading and tokenising are left out of PyTorch's time (in ftjax's they count). Half the PyTorch
steps are timed before the ftjax run and half after, on the same `--threads` cores, so a drifting
machine load hits both.

The default experiment packs its snippets (`data.pack`). `--buckets` also runs it unpacked, in
length buckets (16, 32, 48, 64) with length grouping, right after the default one, each with its
own empty cache.

The last line printed is a JSON object: ftjax_wall_s, ftjax_test_accuracy, torch_recipe_s,
ftjax_over_torch, the bar of issue 23 (ratio <= 0.5 at test accuracy >= 0.838) and, with
`--buckets`, buckets_wall_s, buckets_test_accuracy, buckets_over_torch and buckets_over_default.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import vs_pytorch  # this folder: thread limits, package folders, machine and versions

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "minilm_rotten_tomatoes.py"
RECIPE = dict(epochs=3, batch_size=32, max_length=64, lr=5e-5, test_accuracy=0.838)
SPLIT_SIZES = {"train": 9180, "validation": 1021, "test": 2551}
RATIO_BAR = 0.5
BUCKETS = (
    "--config.data.pack=False",
    "--config.data.length_buckets=(16, 32, 48)",
    "--config.data.group_by_length=50",
)


def recipe_seconds(
    step_s: float, eval_batch_s: float, sizes: dict[str, int] = SPLIT_SIZES
) -> float:
    """PyTorch's recipe from its timed steps: every train step of 3 epochs, a validation pass per
    epoch and one test pass, all at the recipe's batch size."""
    b = RECIPE["batch_size"]
    steps = RECIPE["epochs"] * math.ceil(sizes["train"] / b)
    eval_batches = RECIPE["epochs"] * math.ceil(sizes["validation"] / b) + math.ceil(
        sizes["test"] / b
    )
    return steps * step_s + eval_batches * eval_batch_s


class TorchRecipe:
    """The reference model, optimizer and real batches, timed a step at a time."""

    def __init__(self, seed: int = 0):
        import torch
        import transformers

        from ftjax.data import DataConfig
        from ftjax.data.build import load_records

        transformers.logging.set_verbosity_error()  # the new head's "newly initialized" warning
        folder = vs_pytorch.package_dir(vs_pytorch.MINILM.package) / "model"
        self.torch = torch
        self.model = transformers.BertForSequenceClassification.from_pretrained(
            folder, num_labels=2
        )
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=RECIPE["lr"])
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        splits = load_records(DataConfig(name="rotten_tomatoes")).splits
        self.rng = np.random.default_rng(seed)
        self.train = splits["train"]
        self.validation = splits["validation"]

    def _batch(self, records: Any) -> tuple[dict[str, Any], Any]:
        rows = [records[int(i)] for i in self.rng.choice(len(records), RECIPE["batch_size"], False)]
        inputs = self.tokenizer(
            [r["text"] for r in rows],
            truncation=True,
            max_length=RECIPE["max_length"],
            padding=True,
            return_tensors="pt",
        )
        return dict(inputs), self.torch.tensor([r["label"] for r in rows])

    def train_step_s(self) -> float:
        inputs, labels = self._batch(self.train)
        self.model.train()
        started = time.perf_counter()
        loss = self.model(**inputs, labels=labels).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    def eval_batch_s(self) -> float:
        inputs, _ = self._batch(self.validation)
        self.model.eval()
        started = time.perf_counter()
        with self.torch.inference_mode():
            self.model(**inputs).logits.argmax(-1)
        return time.perf_counter() - started


def run_ftjax(
    workdir: Path, quick: bool, log: Path, flags: tuple[str, ...] = ()
) -> tuple[float, float]:
    """Wall seconds and test accuracy of the default experiment (under `flags`), run as a
    newcomer runs it."""
    cmd = [
        sys.executable,
        "-m",
        "ftjax.main",
        f"--config={CONFIG}{':quick' if quick else ''}",
        f"--workdir={workdir / 'run'}",
        f"--compile_cache={workdir / 'jax_cache'}",  # empty: the first run on a machine
        *flags,
    ]
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(
            f"the ftjax run failed (exit {done.returncode}): {' '.join(cmd)}\n"
            + log.read_text()[-3000:]
        )
    results = json.loads((workdir / "run" / "results.json").read_text())
    return wall, float(results["test"]["accuracy"])


def summarise(
    ftjax_wall: float,
    accuracy: float,
    steps: list[float],
    evals: list[float],
    buckets: tuple[float, float] | None = None,
) -> dict[str, Any]:
    step_s, eval_s = statistics.mean(steps), statistics.mean(evals)  # totals, so means
    torch_s = recipe_seconds(step_s, eval_s)
    ratio = ftjax_wall / torch_s
    extra = {}
    if buckets is not None:
        extra = {
            "buckets_wall_s": round(buckets[0], 1),
            "buckets_test_accuracy": round(buckets[1], 4),
            "buckets_over_torch": round(buckets[0] / torch_s, 3),
            "buckets_over_default": round(buckets[0] / ftjax_wall, 3),
        }
    return {
        "ftjax_wall_s": round(ftjax_wall, 1),
        "ftjax_test_accuracy": round(accuracy, 4),
        "torch_step_s": round(step_s, 4),
        "torch_eval_batch_s": round(eval_s, 4),
        "torch_recipe_s": round(torch_s, 1),
        "ftjax_over_torch": round(ratio, 3),
        "bar_ratio_le_0.5_at_acc_ge_0.838": bool(
            ratio <= RATIO_BAR and accuracy >= RECIPE["test_accuracy"]
        ),
        **extra,
    }


def write(out: Path, header: dict[str, Any], summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "end_to_end_cpu.json").write_text(json.dumps({**header, **summary}, indent=2) + "\n")
    lines = ["# The default experiment vs PyTorch's 3-epoch recipe, end to end on CPU", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| quantity | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    (out / "end_to_end_cpu.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torch-steps", type=int, default=40, help="timed PyTorch train steps")
    p.add_argument("--torch-eval-batches", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="the :quick ftjax run, 4 PyTorch steps")
    p.add_argument("--buckets", action="store_true", help="also run it unpacked, in length buckets")
    p.add_argument("--keep-run", help="copy the default run's workdir to this new folder")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.torch_steps, args.torch_eval_batches = 4, 2
    vs_pytorch.limit_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    started = datetime.datetime.now(datetime.UTC)
    print("PyTorch: loading the reference model and data", flush=True)
    ref = TorchRecipe()
    for _ in range(2):  # warm-up: the first steps allocate
        ref.train_step_s()
        ref.eval_batch_s()
    half = args.torch_steps // 2
    steps = [ref.train_step_s() for _ in range(half)]
    evals = [ref.eval_batch_s() for _ in range(args.torch_eval_batches // 2)]
    print(f"PyTorch: {half} steps timed; now the ftjax run (empty compile cache)", flush=True)
    with tempfile.TemporaryDirectory(prefix="ftjax_e2e_") as tmp:
        wall, accuracy = run_ftjax(Path(tmp), args.quick, Path(tmp) / "ftjax.log")
        if args.keep_run:
            shutil.copytree(Path(tmp) / "run", args.keep_run)
    print(f"ftjax: {wall:.1f} s, test accuracy {accuracy:.4f}", flush=True)
    buckets = None
    if args.buckets:
        with tempfile.TemporaryDirectory(prefix="ftjax_e2e_buckets_") as tmp:
            buckets = run_ftjax(Path(tmp), args.quick, Path(tmp) / "ftjax.log", BUCKETS)
        print(f"ftjax in buckets: {buckets[0]:.1f} s, test accuracy {buckets[1]:.4f}", flush=True)
    print("PyTorch's other half", flush=True)
    steps += [ref.train_step_s() for _ in range(args.torch_steps - half)]
    evals += [ref.eval_batch_s() for _ in range(args.torch_eval_batches - len(evals))]
    summary = summarise(wall, accuracy, steps, evals, buckets)
    header = {
        "date": started.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": vs_pytorch.machine(),
        "threads": args.threads,
        "command": "python benchmarks/end_to_end.py " + " ".join(argv or sys.argv[1:]),
        "versions": vs_pytorch._versions(),
        "torch_steps": args.torch_steps,
        "torch_eval_batches": args.torch_eval_batches,
    }
    write(Path(args.out), header, summary)
    for k, v in summary.items():
        print(f"{k:36s} {v}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
