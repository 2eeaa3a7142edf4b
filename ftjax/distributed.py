"""Starting JAX's multi-controller runtime: one process per host (or several on one machine).

Explicit settings win; otherwise a SLURM job with several tasks or a TPU pod slice is detected.
Not here: the device mesh and sharding rules (`ftjax.sharding`), per-process data reading
(`ftjax.data`).
"""

from __future__ import annotations

import importlib.util
import os

import jax

__all__ = ["MultihostError", "initialize_multihost"]


class MultihostError(RuntimeError):
    """The multi-process runtime cannot start as asked; the message says what to set."""


def _detected_cluster() -> str | None:
    """'slurm' or 'tpu' when this process is one of several in a cluster JAX can configure itself."""
    env = os.environ
    if (
        int(env.get("SLURM_NTASKS", "1")) > 1
        and "SLURM_JOB_ID" in env
        and "SLURM_STEP_NODELIST" in env
    ):
        return "slurm"
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "tpu"  # GKE TPU pod slices list every worker
    if importlib.util.find_spec("libtpu") is not None and _on_tpu_vm():
        return (
            "tpu"  # a Cloud TPU VM: JAX asks the metadata server whether it is part of a pod slice
        )
    return None


def _on_tpu_vm() -> bool:
    try:
        from jax._src import hardware_utils

        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except (
        ImportError,
        AttributeError,
    ):  # an internal helper; without it, give the flags explicitly
        return False


def initialize_multihost(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout_s: int = 300,
    heartbeat_timeout_s: int = 60,
) -> bool:
    """Start JAX's multi-controller runtime if this process is one of several; True if it did.

    Explicit settings (all three, e.g. from `ftjax.launch`) win; otherwise a SLURM job with more than
    one task or a TPU pod slice is detected and `jax.distributed.initialize()` configures itself
    from the environment. Call before anything touches a JAX device. A peer that stops sending
    heartbeats for `heartbeat_timeout_s` makes every other process exit with an error naming it.
    """
    explicit = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    given = {k: v for k, v in explicit.items() if v is not None}
    if given and len(given) < 3:
        missing = sorted(explicit.keys() - given.keys())
        raise MultihostError(
            f"multi-process flags {sorted(given)} were given without {missing}; give all three "
            "(--coordinator_address=HOST:PORT --num_processes=N --process_id=I) or none"
        )
    if given:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise MultihostError(
                f"--process_id={process_id} must be in [0, --num_processes={num_processes})"
            )
        if num_processes == 1:
            return False
    elif _detected_cluster() is None:
        return False
    # CPU processes exchange collectives over TCP with gloo (JAX's default on CPU; stated so it stays so).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        **given,
        initialization_timeout=initialization_timeout_s,
        heartbeat_timeout_seconds=heartbeat_timeout_s,
    )
    return True
