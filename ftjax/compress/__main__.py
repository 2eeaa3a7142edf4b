"""Command line: a finished run compressed after training, written as a new run.

    python -m ftjax.compress --workdir=W --out=O --method=int8 [--activations] [--embeddings]
    python -m ftjax.compress --workdir=W --out=O --method=magnitude --sparsity=0.5 [--scope=global]
    python -m ftjax.compress --workdir=W --out=O --method=magnitude --n_m=2:4
    python -m ftjax.compress --workdir=W --out=O --method=structured --ffn_keep=0.5 [--heads_keep=8]

    python -m ftjax.compress --workdir=W --out=O --method=int8 [--no-convs]   # an image model

`int8`: per-channel int8 weights (and with --activations int8 inputs) of every Dense, through
qwix, with --embeddings the embedding tables too, per row, and (by default on image models)
the convolution kernels per output channel (`ftjax.compress.quantize`). `magnitude`: one-shot
unstructured magnitude pruning of the encoder's Dense kernels (per tensor, global, or N:M; `ftjax.compress.pruning`) without
retraining (train with `config.prune` to prune during fine-tuning instead). `structured`: fewer
FFN neurons and attention heads in every layer, a smaller dense model
(`ftjax.compress.structured`). The new run (`ftjax.compress.derived`) predicts, evaluates and
exports with the same commands as any other; a bad input exits 1 with one line saying why.
Distillation is training (`config.distill`), not a command here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__all__ = ["METHODS", "parser", "compress", "main"]

METHODS = ("int8", "magnitude", "structured")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ftjax.compress",
        description="Compress a finished ftjax run (int8, magnitude or structured pruning) "
        "into a new run.",
    )
    p.add_argument("--workdir", required=True, help="the finished run's --workdir")
    p.add_argument("--out", required=True, help="the new run's folder (new or empty)")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--checkpoint", default="best", choices=("best", "final"))
    p.add_argument("--activations", action="store_true", help="int8: quantise Dense inputs too")
    p.add_argument("--embeddings", action="store_true", help="int8: embedding tables too")
    p.add_argument(
        "--convs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="int8: convolution kernels too, per output channel (default: on for image models)",
    )
    p.add_argument("--sparsity", type=float, default=0.5, help="magnitude: fraction zeroed")
    p.add_argument("--scope", default="tensor", choices=("tensor", "global"))
    p.add_argument("--n_m", default="", help="magnitude: N:M sparsity, e.g. 2:4")
    p.add_argument("--ffn_keep", type=float, default=1.0, help="structured: FFN neurons kept")
    p.add_argument("--heads_keep", type=int, default=None, help="structured: heads kept")
    return p


def _n_m(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        n, m = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"--n_m={text!r}: give N:M, e.g. 2:4") from None
    return n, m


def compress(args: argparse.Namespace) -> str:
    """Makes and writes the compressed run `args` describe; returns a one-line summary."""
    from ftjax import inference
    from ftjax.compress import derived, measure, pruning, quantize, structured

    derived.check_out(args.out, args.workdir)  # before the (slow) load
    run = inference.load_run(args.workdir, args.checkpoint, finished=True)
    if args.method == "int8":
        convs = run.kind == "image" if args.convs is None else args.convs
        spec = quantize.QuantSpec(
            "int8", "int8" if args.activations else None, embeddings=args.embeddings, convs=convs
        )
        new = quantize.quantized(run, spec)
        method = {"method": "int8", **new.record["quantization"]}
    elif args.method == "magnitude":
        n_m = _n_m(args.n_m)
        new = pruning.pruned(run, args.sparsity, args.scope, n_m)
        method = {"method": "magnitude", "sparsity": args.sparsity, "scope": args.scope}
        method["n_m"] = list(n_m) if n_m else None
    else:
        new = structured.prune_run(run, ffn_keep=args.ffn_keep, heads_keep=args.heads_keep)
        method = {"method": "structured", "ffn_keep": args.ffn_keep, "heads_keep": args.heads_keep}
    out = derived.write_run(run, new, args.out, method)
    before, after = measure.stored_size(run.params), measure.stored_size(new.params)
    return (
        f"{args.method}: {args.workdir} ({run.checkpoint}, step {run.step}) -> {out}: "
        f"{before['bytes'] / 2**20:.1f} MB -> {after['bytes'] / 2**20:.1f} MB stored, "
        f"nonzero params {before['nonzero']:,} -> {after['nonzero']:,}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from ftjax import compile as compile_lib

    compile_lib.own_process()
    try:
        print(compress(args), flush=True)
    except (ValueError, OSError) as e:  # every ftjax input error is a ValueError
        sys.exit(f"FATAL: {e}")


if __name__ == "__main__":
    main()
