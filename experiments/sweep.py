"""Run a sweep of ftjax runs (config variants x seeds) as resumable subprocesses.

A sweep is a base config file plus, per run, a dict of config overrides ('plan.preset' ->
'gradual_unfreezing', 'seed' -> 2, ...). Each run gets its own workdir under the sweep folder
(SWEEP/<variant>/seed_<k>) holding a generated `run_config.py` (base config + the overrides, so
the run can be repeated alone with `python -m ftjax.main --config=.../run_config.py
--workdir=...`), `train.log` (the run's output, appended on resume) and everything ftjax writes.

Resuming: a run whose results.json exists is skipped; any other run is started with the same
command, and ftjax resumes it from its newest checkpoint. A run is held by an flock on its
`.sweep.lock` while it trains, so two sweep processes never train the same workdir at once, and
each child gets PR_SET_PDEATHSIG so killing the sweep (even with SIGKILL) also kills its runs
instead of leaving them training unsupervised.

Runs share a JAX persistent compilation cache (SWEEP/.jax_cache): seeds of one variant compile
the same programs, so only the first seed pays for compilation.

Not here: which variants a sweep has (experiments/freeze_ablation.py), tables and plots
(experiments/sweep_report.py).
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib.util
import os
import pprint
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = Path(__file__).resolve().parent
RESULTS = "results.json"
LOCK = ".sweep.lock"

# Sets PR_SET_PDEATHSIG (SIGKILL) and then execs the run: prctl survives exec, so the run dies
# with the sweep process that started it. argv: expected parent pid, then the command.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(130)\n"  # the sweep died before prctl took hold
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class SweepError(ValueError):
    """A sweep cannot start (bad base config, bad override, bad folder); the message says why."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: a variant (e.g. a schedule) at one seed, with its overrides and workdir."""

    variant: str
    seed: int
    overrides: Mapping[str, Any]
    workdir: Path

    @property
    def name(self) -> str:
        return f"{self.variant}/seed_{self.seed}"

    @property
    def results_file(self) -> Path:
        return self.workdir / RESULTS

    @property
    def config_file(self) -> Path:
        return self.workdir / "run_config.py"

    def done(self) -> bool:
        return self.results_file.exists()


@dataclasses.dataclass
class Outcome:
    """What happened to a run in this sweep invocation."""

    run: Run
    status: str  # 'skipped' (already done), 'done', 'failed', 'busy' (another sweep holds it)
    seconds: float = 0.0
    returncode: int | None = None


# ----------------------------------------------------------------------------- configs


def load_config_file(path: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file, as ftjax.main's --config=PATH[:ARG] would call it."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(
            f"base config {path} does not exist; pass a config file such as configs/minilm_rotten_tomatoes.py"
        )
    spec = importlib.util.spec_from_file_location(f"sweep_base_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise SweepError(f"{path} has no get_config(); a config file defines get_config(arg=None)")
    return module.get_config(arg) if arg is not None else module.get_config()


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """Sets each dotted key ('plan.args', 'data.max_length') of `config` in order; returns it."""
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for i, part in enumerate(parents):
            if part not in node:
                raise SweepError(
                    f"override {key!r}: config has no key {'.'.join(parents[: i + 1])!r}"
                )
            node = node[part]
        if leaf not in node:
            raise SweepError(
                f"override {key!r}: config has no key {key!r}; see ftjax.config.defaults() for the keys"
            )
        try:
            node[leaf] = value
        except (TypeError, ValueError) as e:
            raise SweepError(f"override {key!r}={value!r} does not fit the config: {e}") from e
    return config


def build_config(
    base: str | Path, base_arg: str | None, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """The base config file's config with `overrides` applied (what a run's run_config.py returns)."""
    return apply_overrides(load_config_file(base, base_arg), overrides)


def write_run_config(run: Run, base: Path, base_arg: str | None) -> Path:
    """Writes run.config_file: a config file returning the base config with the run's overrides."""
    run.workdir.mkdir(parents=True, exist_ok=True)
    text = (
        f'"""Sweep run {run.name} (generated by experiments/sweep.py; rewritten on every sweep invocation).\n\n'
        f"Run it alone: python -m ftjax.main --config={run.config_file} --workdir={run.workdir}\n"
        '"""\n\n'
        "import sys\n\n"
        f"sys.path.insert(0, {str(EXPERIMENTS)!r})\n"
        "from sweep import build_config  # noqa: E402\n\n"
        f"BASE = {str(base)!r}\n"
        f"BASE_ARG = {base_arg!r}\n"
        f"OVERRIDES = {pprint.pformat(dict(run.overrides), sort_dicts=False, width=110)}\n\n\n"
        "def get_config(arg=None):\n"
        "    return build_config(BASE, BASE_ARG, OVERRIDES)\n"
    )
    if not run.config_file.exists() or run.config_file.read_text() != text:
        run.config_file.write_text(text)
    return run.config_file


def make_runs(
    sweep_dir: Path, variants: Mapping[str, Mapping[str, Any]], seeds: Sequence[int]
) -> list[Run]:
    """Every variant at every seed, seed-major (all variants of seed 0 first, so a partial sweep compares)."""
    runs = []
    for seed in seeds:
        for name, overrides in variants.items():
            runs.append(
                Run(name, seed, {**overrides, "seed": seed}, sweep_dir / name / f"seed_{seed}")
            )
    return runs


# ----------------------------------------------------------------------------- running


def run_command(run: Run) -> list[str]:
    """The `python -m ftjax.main` command of `run` (without the PDEATHSIG launcher)."""
    return [
        sys.executable,
        "-m",
        "ftjax.main",
        f"--config={run.config_file}",
        f"--workdir={run.workdir}",
    ]


def run_env(sweep_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    cache = sweep_dir / ".jax_cache"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    env.update(extra or {})
    return env


class _Active:
    """A started run: its process, log and lock."""

    def __init__(self, run: Run, env: Mapping[str, str]):
        self.run = run
        self.started = time.time()
        self.log = open(run.workdir / "train.log", "a", encoding="utf-8")
        self.log.write(
            f"\n=== sweep: {' '.join(run_command(run))}  ({time.strftime('%Y-%m-%d %H:%M:%S')})\n"
        )
        self.log.flush()
        launcher = [sys.executable, "-c", _LAUNCHER, str(os.getpid())]
        self.proc = subprocess.Popen(
            launcher + run_command(run),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env=dict(env),
        )


def _try_lock(run: Run) -> int | None:
    """An fd holding the run's flock, or None if another process holds it."""
    run.workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run.workdir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def run_all(
    runs: Sequence[Run],
    sweep_dir: Path,
    *,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    on_event: Callable[[Outcome, int, int], None] | None = None,
    poll_s: float = 0.2,
) -> list[Outcome]:
    """Runs every unfinished run (at most `workers` at once); finished ones are skipped.

    Each run's config file must already be written (write_run_config). `on_event(outcome, i, n)` is
    called as each run is skipped or ends. Ctrl-C stops the children (they resume next time).
    """
    if workers < 1:
        raise SweepError(f"workers={workers}; use 1 or more worker processes")
    env = run_env(sweep_dir, env)
    pending = list(runs)
    active: dict[int, tuple[_Active, int]] = {}
    outcomes: list[Outcome] = []
    notify = on_event or (lambda o, i, n: None)

    def record(outcome: Outcome) -> None:
        outcomes.append(outcome)
        notify(outcome, len(outcomes), len(runs))

    try:
        while pending or active:
            while pending and len(active) < workers:
                run = pending.pop(0)
                if run.done():
                    record(Outcome(run, "skipped"))
                    continue
                fd = _try_lock(run)
                if fd is None:
                    record(Outcome(run, "busy"))
                    continue
                if run.done():  # finished by another sweep between the check and the lock
                    os.close(fd)
                    record(Outcome(run, "skipped"))
                    continue
                started = _Active(run, env)
                active[started.proc.pid] = (started, fd)
            for pid, (a, fd) in list(active.items()):
                rc = a.proc.poll()
                if rc is None:
                    continue
                a.log.close()
                os.close(fd)
                del active[pid]
                ok = rc == 0 and a.run.done()
                record(Outcome(a.run, "done" if ok else "failed", time.time() - a.started, rc))
            time.sleep(poll_s if active else 0)
    finally:
        # Interrupted: stop the children; their checkpoints resume them.
        for a, _ in active.values():
            a.proc.terminate()
        for a, fd in active.values():
            try:
                a.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                a.proc.kill()
                a.proc.wait()
            a.log.close()
            os.close(fd)
    return outcomes


def log_tail(run: Run, chars: int = 2000) -> str:
    """The end of a run's train.log (for failure messages)."""
    log = run.workdir / "train.log"
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no train.log)"
