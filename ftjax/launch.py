"""Local multi-process runs: N CPU processes on this machine joined into one JAX cluster over loopback.

    python -m ftjax.launch --num_processes 2 [--devices_per_process 4] [--timeout 600] -- \\
        --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE ...]

Starts `python -m ftjax.main ARGS --coordinator_address=127.0.0.1:PORT --num_processes=N
--process_id=I` N times (PORT a free loopback port), each on the CPU with `devices_per_process`
host devices, and prints every line of their output prefixed with `[pI]`. If one process exits
with an error, the others are stopped (SIGTERM, then SIGKILL after `--grace` seconds) and the
launcher exits with status 1 and a message naming the process; past `--timeout` all are stopped
and it exits with 124. It is the same program a real cluster runs once per host, so it exercises
the multi-host code paths (collectives, per-process input, collective checkpoints) on one machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

__all__ = ["POLL_S", "free_port", "child_env", "child_command", "launch", "parse", "main"]

POLL_S = 0.1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(devices_per_process: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one process: CPU only, with `devices_per_process` host devices."""
    env = dict(os.environ if base is None else base)
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    env["XLA_FLAGS"] = " ".join(
        [*flags, f"--xla_force_host_platform_device_count={devices_per_process}"]
    )
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the launcher as they are printed
    return env


def child_command(
    main_args: Sequence[str], port: int, num_processes: int, process_id: int
) -> list[str]:
    return [
        sys.executable,
        "-u",
        "-m",
        "ftjax.main",
        *main_args,
        f"--coordinator_address=127.0.0.1:{port}",
        f"--num_processes={num_processes}",
        f"--process_id={process_id}",
    ]


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _stream(proc: subprocess.Popen, prefix: str, out: TextIO, lock: threading.Lock) -> None:
    for line in iter(proc.stdout.readline, ""):
        with lock:
            out.write(f"{prefix} {line.rstrip()}\n")
            out.flush()


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM every live process, then SIGKILL those still alive after `grace_s`."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def launch(
    main_args: Sequence[str],
    num_processes: int,
    devices_per_process: int = 1,
    *,
    timeout_s: float | None = None,
    grace_s: float = 10.0,
    out: TextIO = sys.stdout,
) -> int:
    """Run ftjax.main as `num_processes` local processes; returns the exit status (see module doc)."""
    if num_processes < 1 or devices_per_process < 1:
        raise ValueError(
            f"--num_processes ({num_processes}) and --devices_per_process ({devices_per_process}) must be >= 1"
        )
    port = free_port()
    env = child_env(devices_per_process)
    lock = threading.Lock()
    say = lambda msg: _stream_line(out, lock, msg)
    procs: list[subprocess.Popen] = []
    threads = []
    try:
        for i in range(num_processes):
            proc = subprocess.Popen(
                child_command(main_args, port, num_processes, i),
                env=env,
                text=True,
                bufsize=1,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            procs.append(proc)
            say(
                f"[launch] process {i}: pid {proc.pid}, {devices_per_process} CPU devices, coordinator 127.0.0.1:{port}"
            )
            t = threading.Thread(target=_stream, args=(proc, f"[p{i}]", out, lock), daemon=True)
            t.start()
            threads.append(t)
        return _supervise(procs, timeout_s, grace_s, say)
    finally:
        _stop(procs, grace_s)
        for t in threads:
            t.join(timeout=5)


def _stream_line(out: TextIO, lock: threading.Lock, msg: str) -> None:
    with lock:
        out.write(msg + "\n")
        out.flush()


def _supervise(procs: list[subprocess.Popen], timeout_s: float | None, grace_s: float, say) -> int:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        codes = [p.poll() for p in procs]
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            i, code = failed[0]
            others = [j for j, c in enumerate(codes) if c is None]
            say(
                f"[launch] ERROR: process {i} (pid {procs[i].pid}) {_describe_exit(code)}; "
                f"stopping the other processes {others}. Rerun the same command to resume from the last checkpoint."
            )
            _stop(procs, grace_s)
            return 1
        if all(c == 0 for c in codes):
            say(f"[launch] all {len(procs)} processes finished")
            return 0
        if deadline is not None and time.monotonic() > deadline:
            say(f"[launch] ERROR: timed out after {timeout_s:.0f}s; stopping all processes")
            _stop(procs, grace_s)
            return 124
        time.sleep(POLL_S)


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(launcher options, ftjax.main arguments): the main arguments follow `--`."""
    argv = list(argv)
    if "--" not in argv:
        raise SystemExit(
            "usage: python -m ftjax.launch --num_processes N [--devices_per_process K] -- "
            "--config=... --workdir=... (the ftjax.main arguments go after '--')"
        )
    cut = argv.index("--")
    parser = argparse.ArgumentParser(
        prog="python -m ftjax.launch", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--num_processes", type=int, required=True, help="processes to start")
    parser.add_argument(
        "--devices_per_process", type=int, default=1, help="CPU host devices of each process"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="stop everything after this many seconds"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds between SIGTERM and SIGKILL when stopping",
    )
    opts = parser.parse_args(argv[:cut])
    main_args = argv[cut + 1 :]
    clash = [
        a
        for a in main_args
        if a.split("=")[0] in ("--coordinator_address", "--num_processes", "--process_id")
    ]
    if clash:
        parser.error(f"{clash} are set by the launcher; leave them out of the ftjax.main arguments")
    if opts.num_processes < 1 or opts.devices_per_process < 1:
        parser.error("--num_processes and --devices_per_process must be at least 1")
    return opts, main_args


def main(argv: Sequence[str] | None = None) -> int:
    opts, main_args = parse(sys.argv[1:] if argv is None else argv)
    signal.signal(
        signal.SIGTERM, lambda *_: sys.exit(143)
    )  # run the finally: that stops the children
    try:
        return launch(
            main_args,
            opts.num_processes,
            opts.devices_per_process,
            timeout_s=opts.timeout,
            grace_s=opts.grace,
        )
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
