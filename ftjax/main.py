"""Command line: `python -m ftjax.main --config=configs/NAME.py[:ARG] --workdir=DIR [--config.KEY=VALUE ...]`.

The same as the `ftjax` console script. Rerunning a command on a workdir that holds checkpoints
resumes it.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file, e.g. configs/minilm_rotten_tomatoes.py", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "folder for checkpoints, metrics and results of this run")
flags.mark_flags_as_required(["config", "workdir"])


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.KEY=VALUE")
    logging.set_verbosity(logging.WARNING)
    from ftjax import train  # imported late so --help stays fast

    train.run(_CONFIG.value, _WORKDIR.value)


def cli() -> None:
    app.run(_main)


if __name__ == "__main__":
    cli()
