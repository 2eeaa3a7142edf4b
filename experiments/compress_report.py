"""Accuracy vs size vs CPU latency of a fine-tuned run and its compressed variants, in one table.

    python experiments/compress_report.py --teacher=runs/minilm_rt \
        --trained=distilled-3L:runs/minilm_rt_distill,3L:runs/minilm_rt_3l \
        --out=experiments/results/compress/minilm_rt

Variants: the teacher; every `--trained` run (`name:workdir`: a distilled student, its
undistilled twin, a run pruned during fine-tuning); and those made here from the teacher with
`python -m ftjax.compress` (int8 weights, int8 weights and activations, one-shot magnitude
pruning at `--sparsities` and 2:4, int8 embedding tables and structured pruning of FFN neurons
and heads, all but the first two kinds for text encoders only), written under `--work`. Each is evaluated on its test split (`ftjax.evaluate`, as training evaluates) and
timed in this one process (`ftjax.compress.measure.latencies`: compiled forwards at batch 1 and
batch 32 at `--seq_len` tokens, all variants in turn over 5 rounds, medians), so the ratios to the
teacher are the figures to quote.
Writes results.md, results.json and compress.png into `--out`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax

from ftjax import inference
from ftjax.compress import __main__ as compress_cli
from ftjax.compress import measure
from ftjax.evaluate import run_evaluation


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="the finished fine-tuned run")
    p.add_argument("--trained", default="", help="name:workdir,... runs trained separately")
    p.add_argument("--out", required=True, help="folder for results.md/json and compress.png")
    p.add_argument("--work", default="", help="folder for the variants made here")
    p.add_argument("--sparsities", default="0.3,0.5", help="one-shot magnitude sparsities")
    p.add_argument("--ffn_keep", default="0.5", help="structured: FFN fractions kept")
    p.add_argument("--heads_keep", default="", help="structured: heads kept (with ffn_keep 1)")
    p.add_argument("--seq_len", type=int, default=32, help="text: tokens per timed example")
    p.add_argument("--repeats", type=int, default=10, help="timed forwards per round (5 rounds)")
    return p


def _made_here(args: argparse.Namespace, text: bool) -> list[tuple[str, list[str]]]:
    """(name, compress-command flags) of the variants made from the teacher; embedding tables
    and structured pruning (FFN neurons, heads) exist for text encoders only."""
    out = [("int8", ["--method=int8"])]
    if text:
        out.append(("int8 + embeddings", ["--method=int8", "--embeddings"]))
    out.append(("int8 w+a", ["--method=int8", "--activations"]))
    if not text:  # magnitude pruning's weights are an encoder's Dense kernels
        return out
    for s in filter(None, args.sparsities.split(",")):
        out.append((f"magnitude {float(s):.0%}", ["--method=magnitude", f"--sparsity={s}"]))
    out.append(("magnitude 2:4", ["--method=magnitude", "--n_m=2:4"]))
    for f in filter(None, args.ffn_keep.split(",")):
        out.append((f"FFN {float(f):.0%}", ["--method=structured", f"--ffn_keep={f}"]))
    for h in filter(None, args.heads_keep.split(",")):
        out.append((f"heads {h}", ["--method=structured", f"--heads_keep={h}"]))
    return out


def _preprocessing(workdir: str) -> dict:
    return json.loads((Path(workdir) / "inference" / "inference.json").read_text())["preprocessing"]


def _inputs(args: argparse.Namespace) -> str:
    """How the timed inputs were made: text at `--seq_len` tokens, images at the run's size."""
    pre = _preprocessing(args.teacher)
    if pre.get("tokenizer_file"):
        return f"text timed at {args.seq_len} tokens"
    return f"images timed at {pre.get('image_size')} px"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def variants(args: argparse.Namespace) -> list[tuple[str, Path]]:
    found = [("teacher", Path(args.teacher))]
    for item in filter(None, args.trained.split(",")):
        name, _, workdir = item.partition(":")
        found.append((name, Path(workdir)))
    work = Path(args.work or Path(args.teacher).parent / f"{Path(args.teacher).name}_compressed")
    for name, flags in _made_here(args, text="tokenizer_file" in _preprocessing(args.teacher)):
        out = work / _slug(name)
        if not (out / "results.json").is_file():
            cmd = [f"--workdir={args.teacher}", f"--out={out}", *flags]
            print(compress_cli.compress(compress_cli.parser().parse_args(cmd)), flush=True)
        found.append((name, out))
    return found


def evaluate_variant(name: str, workdir: Path) -> dict:
    """The variant's test metric (its run's best metric) and sizes."""
    data = {
        "name": json.loads((workdir / "config.json").read_text())["data"]["name"],
        "split": "test",
    }
    _, evaluation = run_evaluation(workdir, data, name="compress-test", overwrite=True)
    run = inference.load_run(workdir, finished=True)
    metric = json.loads((workdir / "results.json").read_text())["best_metric"]
    row = {"variant": name, "workdir": str(workdir), "metric": metric}
    row["layers"] = run.record["checkpoint_config"].get("num_hidden_layers")
    row.update(test=evaluation["metrics"][metric], **measure.stored_size(run.params))
    print(f"{name}: test {metric} {row['test']:.4f}, {row['bytes'] / 2**20:.1f} MB", flush=True)
    return row


def time_variants(rows: list[dict], args: argparse.Namespace) -> None:
    """Batch-1 latency and batch-32 throughput of every variant, timed in turn (one process)."""
    runs = {r["variant"]: inference.load_run(r["workdir"], finished=True) for r in rows}
    b1 = measure.latencies(runs, 1, args.seq_len, repeats=args.repeats)
    b32 = measure.latencies(runs, 32, args.seq_len, repeats=args.repeats)
    for r in rows:
        r.update(b1_ms=1e3 * b1[r["variant"]], b32_ex_s=32 / b32[r["variant"]])
        print(f"{r['variant']}: b1 {r['b1_ms']:.2f} ms, b32 {r['b32_ex_s']:.0f} ex/s", flush=True)


def table(rows: list[dict]) -> str:
    t = rows[0]
    head = (
        "| variant | test acc % | of teacher | params | nonzero | stored MB | of teacher | "
        "b1 ms | b32 ex/s | b32 speed-up |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {100 * r['test']:.2f} | {r['test'] / t['test']:.1%} | "
            f"{r['params'] / 1e6:.2f}M | {r['nonzero'] / 1e6:.2f}M | {r['bytes'] / 2**20:.1f} | "
            f"{r['bytes'] / t['bytes']:.0%} | {r['b1_ms']:.2f} | {r['b32_ex_s']:.0f} | "
            f"{r['b32_ex_s'] / t['b32_ex_s']:.2f}x |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in (
        (axes[0], "bytes", "stored size (MB)"),
        (axes[1], "b32_ex_s", "CPU throughput, batch 32 (examples/s)"),
    ):
        for r in rows:
            x = r[key] / 2**20 if key == "bytes" else r[key]
            ax.scatter(x, 100 * r["test"], s=30)
            ax.annotate(
                r["variant"],
                (x, 100 * r["test"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{Path(rows[0]['workdir']).name}: compressed variants")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    started = time.time()
    rows = [evaluate_variant(name, w) for name, w in variants(args)]
    time_variants(rows, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    about = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s)",
        "jax": jax.__version__,
        "seq_len": args.seq_len,
        "command": " ".join(sys.argv),
        "wall_s": round(time.time() - started, 1),
    }
    (out / "results.json").write_text(json.dumps({"about": about, "rows": rows}, indent=2))
    (out / "results.md").write_text(
        f"# Compressed variants of {args.teacher}\n\n{table(rows)}\n\n"
        f"Measured {about['date']} on {about['machine']}, jax {about['jax']}; {_inputs(args)}. "
        f"Command: `{about['command']}`\n"
    )
    plot(rows, out / "compress.png")
    print(table(rows))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
