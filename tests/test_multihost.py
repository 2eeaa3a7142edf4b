"""Multi-process runs on one machine: CPU processes joined by `jax.distributed` over loopback.

A tiny BERT on a Rotten Tomatoes subset (256 train, 100 validation examples: not a multiple of the
eval batch) through a 2-phase plan, run as 2 processes x 4 CPU devices (via `ftjax.launch`) and as
1 process x 8 devices: the same global batches, so the same params (1e-5 relative) and the same
validation metrics. A 2-process run whose peer is killed stops on JAX's heartbeat check, and
rerunning it on 1 process resumes its checkpoint to the same result. Every subprocess has a
timeout; the coordinator listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from train_fixtures import (
    REPO,
    checkpoint_steps,
    flat_arrays,
    read_jsonl,
    save_tiny_bert,
    write_config,
)

from ftjax import launch

PHASES = (
    dict(name="head", trainable="head", lr=1e-2, steps=6),
    dict(
        name="all",
        trainable="all",
        lr=1e-3,
        schedule=dict(kind="warmup_linear", warmup_fraction=0.25),
    ),
)  # 16 steps in all: one epoch of 256 examples at batch 16; phase 1 ends at step 6
TOTAL_STEPS = 16
RUN_TIMEOUT_S = 420  # one run on 2 shared CPU cores, compilation included
HEARTBEAT_S = 10


@pytest.fixture(scope="module")
def run_setup(tmp_path_factory):
    """(config file, environment) of the small run; its data is prepared once, before any run."""
    from ftjax.data import DataConfig, load_records

    root = tmp_path_factory.mktemp("multihost")
    bert = save_tiny_bert(root / "bert")
    load_records(DataConfig(name="rotten_tomatoes", data_dir=str(root / "tfds")))
    config = write_config(
        root / "config.py",
        bert,
        root / "tfds",
        plan__phases=PHASES,
        data__eval_examples=100,
        train__eval_batch_size=32,
        train__eval_every_steps=0,
        train__checkpoint_every_steps=2,
        train__keep_checkpoints=20,
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "JAX_PLATFORMS": "cpu",
        # Later runs of the same topology reuse the first one's compiled steps.
        "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    return config, env


def _launch(
    config: Path, workdir: Path, env: dict, processes: int, devices: int
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "ftjax.launch",
        f"--num_processes={processes}",
        f"--devices_per_process={devices}",
        f"--timeout={RUN_TIMEOUT_S}",
        "--",
        f"--config={config}",
        f"--workdir={workdir}",
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S + 60, cwd=REPO, env=env
    )
    assert out.returncode == 0, (
        f"{processes}x{devices} run failed ({out.returncode}):\n{out.stdout[-4000:]}{out.stderr[-2000:]}"
    )
    return out


@pytest.fixture(scope="module")
def two_process_run(run_setup, tmp_path_factory):
    config, env = run_setup
    workdir = tmp_path_factory.mktemp("two_process") / "run"
    started = time.time()
    out = _launch(config, workdir, env, processes=2, devices=4)
    print(f"2 processes x 4 devices: {time.time() - started:.0f}s")
    return workdir, out.stdout


def _params(workdir: Path, step: int) -> dict[str, np.ndarray]:
    """The saved params at `step`, read onto this process's one device (the writer's topology may differ)."""
    import jax
    import orbax.checkpoint as ocp

    path = workdir / "checkpoints" / str(step) / "state"
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
            getattr(meta, "item_metadata", meta),
        )
        return flat_arrays(ckptr.restore(path, target)["params"])


def _assert_params_close(a: Path, b: Path) -> None:
    """Equal within 1e-5 relative: over all params, and leaf by leaf. Attention key biases are left
    out of the per-leaf check: softmax ignores a shift of all keys, so their gradient is exactly
    zero in exact arithmetic and its float rounding noise, which Adam scales up to lr-sized steps,
    is all they learn."""
    pa, pb = _params(a, TOTAL_STEPS), _params(b, TOTAL_STEPS)
    assert pa.keys() == pb.keys()
    total = np.sqrt(
        sum(np.sum((pa[k] - pb[k]) ** 2) for k in pa) / sum(np.sum(pb[k] ** 2) for k in pb)
    )
    assert total <= 1e-5, f"params differ by {total:.2e} (relative, all params) between {a} and {b}"
    diffs = {
        k: float(np.linalg.norm(pa[k] - pb[k]) / max(np.linalg.norm(pb[k]), 1e-30))
        for k in pa
        if "['key']['bias']" not in k
    }
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= 1e-5, (
        f"param {worst} differs by {diffs[worst]:.2e} (relative) between {a} and {b}"
    )


def _validation(workdir: Path) -> list[dict]:
    return [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "validation"]


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_eight_devices(
    two_process_run, run_setup, tmp_path
):
    workdir2, log = two_process_run
    assert (
        "process 0/2: 4 local of 8 global cpu devices" in log
        and "process 1/2: 4 local of 8 global cpu devices" in log
    )
    assert "mesh {'data': 8, 'fsdp': 1}" in log
    assert log.count("validation: accuracy") == 2, "progress lines must come from process 0 only"
    assert len(re.findall(r"^\[p1\].*validation: accuracy", log, re.M)) == 0
    config, env = run_setup
    started = time.time()
    _launch(config, tmp_path / "one", env, processes=1, devices=8)
    print(f"1 process x 8 devices: {time.time() - started:.0f}s")
    _assert_params_close(workdir2, tmp_path / "one")
    val2, val1 = _validation(workdir2), _validation(tmp_path / "one")
    assert [r["step"] for r in val2] == [6, TOTAL_STEPS] == [r["step"] for r in val1]
    for r2, r1 in zip(val2, val1):
        assert (
            r2["count"] == r1["count"] == 100
        )  # every example once, across processes, padding masked
        assert r2["accuracy"] == r1["accuracy"]
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-6)
        # Metrics from the kept per-example rows (every process holds the global batch's rows):
        assert r2["macro_f1"] == r1["macro_f1"] and r2["mcc"] == pytest.approx(r1["mcc"], abs=1e-12)
        assert r2["roc_auc"] == pytest.approx(r1["roc_auc"], abs=1e-4)
    # Written once, by process 0: one row per event, and a single results file.
    rows = read_jsonl(workdir2 / "metrics.jsonl")
    assert len(rows) == len({(r["step"], r["split"]) for r in rows})
    assert (workdir2 / "results.json").is_file()


def _start_direct(config: Path, workdir: Path, env: dict, logs: Path) -> list[subprocess.Popen]:
    """Two ftjax.main processes started by hand (no launcher), as a cluster scheduler would."""
    port = launch.free_port()
    child_env = launch.child_env(4, env)
    procs = []
    for i in range(2):
        cmd = launch.child_command(
            [f"--config={config}", f"--workdir={workdir}", f"--heartbeat_timeout={HEARTBEAT_S}"],
            port,
            2,
            i,
        )
        with open(
            logs / f"p{i}.log", "w"
        ) as log:  # the child keeps its own copy of the file descriptor
            procs.append(
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=child_env)
            )
    return procs


@pytest.mark.slow
def test_killed_peer_stops_the_others_and_the_run_resumes_on_one_process(
    two_process_run, run_setup, tmp_path
):
    config, env = run_setup
    workdir = tmp_path / "run"
    procs = _start_direct(config, workdir, env, tmp_path)
    try:
        deadline = time.time() + RUN_TIMEOUT_S
        while not [s for s in checkpoint_steps(workdir) if s >= 6]:  # into the second phase
            assert all(p.poll() is None for p in procs), (tmp_path / "p0.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint of phase 2 appeared"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.time()
        code = procs[0].wait(timeout=HEARTBEAT_S + 60)  # raises TimeoutExpired on a hang
        waited = time.time() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    log = (tmp_path / "p0.log").read_text()
    print(f"process 0 exited ({code}) {waited:.1f}s after its peer was killed")
    assert code != 0 and waited <= HEARTBEAT_S + 60
    assert "stopped sending heartbeats" in log or "another task died" in log, log[-3000:]
    assert not (workdir / "results.json").exists(), "the run finished before its peer was killed"
    last = checkpoint_steps(workdir)[-1]
    assert 6 <= last < TOTAL_STEPS
    # Rerun on 1 process x 8 devices: resumes the 2-process checkpoint and ends where the
    # uninterrupted 2-process run ended.
    out = _launch(config, workdir, env, processes=1, devices=8)
    resumed = re.search(r"Resumed .* at step (\d+)", out.stdout)
    assert resumed and int(resumed.group(1)) >= 6, out.stdout[-3000:]
    print(f"resumed the 2-process checkpoint of step {resumed.group(1)} on 1 process")
    _assert_params_close(workdir, two_process_run[0])
    assert _validation(workdir)[-1]["accuracy"] == _validation(two_process_run[0])[-1]["accuracy"]


def test_launcher_stops_the_others_when_one_process_dies(tmp_path):
    """A killed process makes the launcher stop its peers and exit 1 with a message naming it."""
    config = tmp_path / "config.py"
    config.write_text(
        "from ftjax.config import defaults\n\n\ndef get_config(arg=None):\n    return defaults()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Process 1 is killed as soon as it starts, so it never joins: process 0 would wait for it in
    # jax.distributed.initialize for minutes, unless the launcher stops it.
    cmd = [
        sys.executable,
        "-u",
        "-m",
        "ftjax.launch",
        "--num_processes=2",
        "--grace=5",
        "--timeout=120",
        "--",
        f"--config={config}",
        f"--workdir={tmp_path / 'w'}",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env
    )
    lines, pids = [], {}
    try:
        deadline = time.time() + 60
        while len(pids) < 2 and time.time() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if m := re.match(r"\[launch\] process (\d): pid (\d+)", line):
                pids[int(m.group(1))] = int(m.group(2))
        assert len(pids) == 2, "".join(lines)
        os.kill(pids[1], signal.SIGKILL)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines) + rest
    assert proc.returncode == 1, output
    assert re.search(
        r"\[launch\] ERROR: process 1 \(pid \d+\) was killed by SIGKILL; stopping the other processes",
        output,
    )
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # process 0 is gone too


def test_launcher_arguments_and_child_setup():
    opts, main_args = launch.parse(
        ["--num_processes", "2", "--devices_per_process", "4", "--", "--config=c.py", "--workdir=w"]
    )
    assert (opts.num_processes, opts.devices_per_process, main_args) == (
        2,
        4,
        ["--config=c.py", "--workdir=w"],
    )
    with pytest.raises(SystemExit, match="after '--'"):
        launch.parse(["--num_processes", "2", "--config=c.py"])
    with pytest.raises(SystemExit):
        launch.parse(["--num_processes", "2", "--", "--process_id=1"])  # the launcher's to set
    env = launch.child_env(
        4, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_dump_to=/tmp/x"}
    )
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=4"
    assert env["JAX_PLATFORMS"] == "cpu"
    cmd = launch.child_command(["--config=c.py"], 1234, 2, 1)
    assert cmd[-3:] == [
        "--coordinator_address=127.0.0.1:1234",
        "--num_processes=2",
        "--process_id=1",
    ]


def test_partial_multihost_flags_are_an_error():
    from ftjax import distributed

    with pytest.raises(distributed.MultihostError, match="without .*'process_id'"):
        distributed.initialize_multihost("127.0.0.1:1234", 2)
    with pytest.raises(
        distributed.MultihostError, match=r"--process_id=2 must be in \[0, --num_processes=2\)"
    ):
        distributed.initialize_multihost("127.0.0.1:1234", 2, 2)
    assert (
        distributed.initialize_multihost("127.0.0.1:1234", 1, 0) is False
    )  # one process: nothing to join
