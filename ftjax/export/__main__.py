"""Command line: `python -m ftjax.export --workdir=W --out=DIR --format=hf|peft|flax
[--checkpoint=best|final] [--overwrite]`.

Prints what was written and how to load it; an export that cannot be made exits 1 with one
error line saying why. See `ftjax.export` for the formats.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from ftjax.export import FORMATS
    from ftjax.inference import CHECKPOINTS

    parser = argparse.ArgumentParser(
        prog="python -m ftjax.export",
        description="Export a finished ftjax run for transformers/PyTorch (hf; LoRA merged), "
        "as a PEFT LoRA adapter (peft) or as Flax params (flax).",
    )
    parser.add_argument("--workdir", required=True, help="the run's --workdir")
    parser.add_argument("--out", required=True, help="folder to write (new or empty)")
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    parser.add_argument(
        "--checkpoint", default="best", help=f"one of {', '.join(CHECKPOINTS)} (default best)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ftjax.export import ExportError, export

    args = _parser().parse_args(argv)
    try:
        summary = export(args.workdir, args.out, args.format, args.checkpoint, args.overwrite)
    except ExportError as e:
        print(f"python -m ftjax.export: error: {e}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
