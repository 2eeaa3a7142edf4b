"""Command line: `python -m ftjax.main --config=configs/NAME.py[:ARG] --workdir=DIR [--config.KEY=VALUE ...]`.

The same as the `ftjax` console script. Rerunning a command on a workdir that holds checkpoints
resumes it.

Multi-process runs (one process per host, or several on one machine via `ftjax.launch`) start
JAX's multi-controller runtime first: on a SLURM job with several tasks and on a TPU pod slice it
configures itself from the environment; elsewhere give --coordinator_address, --num_processes and
--process_id to every process. Each process logs its topology line.

`--config.KEY=None` unsets an integer or float key (e.g. `--config.train.steps=None`, so that
`--config.train.epochs` decides the run's length); keys that need a value say so.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

__all__ = ["cli"]


def _or_none(parser_class):
    """An absl number parser that also reads 'None' (any case) as None."""

    class OrNone(parser_class):
        def parse(self, argument):
            if isinstance(argument, str) and argument.strip().lower() == "none":
                return None
            return super().parse(argument)

    OrNone.__name__ = f"{parser_class.__name__}OrNone"
    return OrNone()


# config_flags parses int and float keys with these (it looks its parsers up by the key's type),
# so `--config.train.steps=None` unsets a key instead of failing on int('None').
config_flags.register_flag_parser_for_type(int, _or_none(flags.IntegerParser))
config_flags.register_flag_parser_for_type(float, _or_none(flags.FloatParser))

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "experiment config file, e.g. configs/minilm_rotten_tomatoes.py",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "folder for checkpoints, metrics and results of this run"
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "HOST:PORT of process 0's coordinator, for multi-process runs that JAX does "
    "not detect (SLURM and TPU pod slices are detected)",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "processes in a multi-process run", lower_bound=1
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "this process's index in [0, num_processes)", lower_bound=0
)
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout",
    60,
    "seconds without a peer's heartbeat after which the other processes stop with an error",
    lower_bound=1,
)
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout",
    300,
    "seconds to wait for every process to join a multi-process run",
    lower_bound=1,
)
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache",
    os.environ.get("JAX_COMPILATION_CACHE_DIR", os.path.join("~", ".cache", "ftjax", "jax")),
    "folder of JAX's persistent compilation cache (default: $JAX_COMPILATION_CACHE_DIR or ~/.cache/ftjax/jax): "
    "reruns, resumes and the seeds of a sweep reuse compiled steps instead of compiling again ('' turns it off)",
)
flags.mark_flags_as_required(["config", "workdir"])


def _use_compile_cache(folder: str) -> None:
    if not folder:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(folder))
    # Every executable, not only those over 1 s to compile: each phase change compiles small
    # helpers (optimizer init, the params check) again, a few seconds per run in all.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _start_runtime() -> None:
    """Joins the multi-process runtime (if this is one of several processes) and logs the topology."""
    import jax

    from ftjax import config as cfg_lib
    from ftjax import distributed, sharding

    distributed.initialize_multihost(
        _COORDINATOR.value,
        _NUM_PROCESSES.value,
        _PROCESS_ID.value,
        initialization_timeout_s=_INIT_TIMEOUT.value,
        heartbeat_timeout_s=_HEARTBEAT.value,
    )
    local = jax.local_devices()
    try:
        mesh = str(dict(sharding.make_mesh(cfg_lib.mesh_config(_CONFIG.value)).shape))
    except sharding.ShardingError:
        mesh = "invalid (the run says why)"
    print(
        f"process {jax.process_index()}/{jax.process_count()}: {len(local)} local of {jax.device_count()} "
        f"global {local[0].platform} devices (ids {[d.id for d in local]}); mesh {mesh}",
        flush=True,
    )


def _check_overrides() -> None:
    """Command-line settings that would be silently ignored are errors saying what to do."""
    overridden = config_flags.get_override_values(flags.FLAGS["config"])
    config = _CONFIG.value
    if "train.epochs" in overridden and config.train.steps is not None:
        sys.exit(
            f"FATAL: --config.train.epochs={overridden['train.epochs']} would be ignored: the "
            f"config sets train.steps={config.train.steps}, which decides the run's length. Add "
            "--config.train.steps=None to train for epochs instead."
        )


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.KEY=VALUE")
    _check_overrides()
    logging.set_verbosity(logging.WARNING)
    _use_compile_cache(_COMPILE_CACHE.value)
    _start_runtime()
    from ftjax import compile as compile_lib
    from ftjax import train  # imported late so --help stays fast

    compile_lib.own_process()  # no user code in this process: JAX's tracing caches are ftjax's

    try:
        train.run(_CONFIG.value, _WORKDIR.value)
    except train.DiskFullError as e:
        _exit_with_last_word(f"{type(e).__module__}.{type(e).__name__}: {e}")


def _exit_with_last_word(message: str) -> None:
    """Print `message` as stderr's last line and exit now.

    orbax's failed writer threads keep printing tracebacks after the error reaches here, and
    would bury this line (or cut into it) until interpreter shutdown. Their stderr goes to
    /dev/null first; the message is one write, on a line of its own.
    """
    sys.stderr.flush()
    last_word = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    sys.stderr = open(devnull, "w", closefd=False)  # Python-level writers in other threads
    os.dup2(devnull, 2)  # and C-level ones
    os.write(last_word, f"\n{message}\n".encode())
    os._exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with an unknown `--config.KEY` named as such instead of a bare AttributeError."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        name = str(e).strip("\"'")
        keys = [
            a.split("=", 1)[0].removeprefix("--") for a in argv[1:] if a.startswith("--config.")
        ]
        bad = [k for k in keys if k.split(".")[-1] == name] or keys
        hint = ""
        if any(k.startswith("config.plan.args.") for k in bad):
            hint = (
                ". plan.args holds the arguments of a preset (plan.preset) and only the ones the "
                "config sets; a config with explicit plan.phases has none. To scale every "
                "phase's learning rate, use --config.plan.lr_scale=FACTOR (e.g. 0.5)"
            )
        sys.exit(
            f"FATAL: unknown config key {', '.join(bad)}; the keys and their defaults are in "
            f"ftjax/config.py defaults() and the config file{hint}"
        )


def cli() -> None:
    app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
    cli()
