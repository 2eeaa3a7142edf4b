"""What a compressed model costs: its stored size, its nonzero weights and its inference time.

    size = stored_size(run.params)                  # {"params", "nonzero", "bytes"}
    sec = latencies({"a": run_a, "b": run_b}, 32)   # median seconds per forward, interleaved

Times are medians of compiled forwards, the models timed in turn over several rounds, on whatever
device JAX runs on; they are only comparable between models measured in the same process on the
same machine, so a report prints them beside the teacher's and as ratios to it.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftjax import sharding
from ftjax.compile import StepCache
from ftjax.compress import quantize
from ftjax.inference import Run
from ftjax.models.base import Batch

__all__ = ["stored_size", "latencies", "compiled_forward", "example_inputs"]


def stored_size(params: Any) -> dict[str, int]:
    """Params (elements of float leaves; an int8 kernel's values count once, its scales too),
    nonzero elements, and bytes as stored."""
    leaves = jax.tree.leaves(params)
    return {
        "params": int(sum(np.size(x) for x in leaves)),
        "nonzero": int(sum(np.count_nonzero(np.asarray(x)) for x in leaves)),
        "bytes": quantize.stored_bytes(params),
    }


def example_inputs(run: Run, batch_size: int, seq_len: int, seed: int = 0) -> Batch:
    """A batch of the run's inputs: random token ids at `seq_len` (no padding), or images at the
    run's image size."""
    rng = np.random.default_rng(seed)
    if run.kind == "image":
        size = run.preprocessing["image_size"]
        h, w = (size, size) if isinstance(size, int) else size
        return {"image": jnp.asarray(rng.normal(size=(batch_size, h, w, 3)), jnp.float32)}
    vocab = run.record["checkpoint_config"].get("vocab_size", 1000)
    ids = rng.integers(1000 if vocab > 2000 else 1, vocab, size=(batch_size, seq_len))
    batch = {"input_ids": jnp.asarray(ids, jnp.int32)}
    batch["attention_mask"] = jnp.ones_like(batch["input_ids"])
    if "token_type_ids" in run.model.input_keys:
        batch["token_type_ids"] = jnp.zeros_like(batch["input_ids"])
    return {k: v for k, v in batch.items() if k in run.model.input_keys}


def compiled_forward(run: Run, batch: Batch):
    """`run`'s inference forward on `batch`'s shapes, compiled as evaluation compiles it (the
    model's XLA:CPU options included), with its placed params: a () -> logits thunk."""
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    params, state = jax.device_put((run.params, run.model_state))
    jitted = jax.jit(lambda p, s, b: run.model.apply(p, s, b, train=False)[0])
    cache = StepCache(run.model.cpu_compiler_options)
    cache.compile("forward", lambda: jitted.lower(params, state, batch), mesh)
    forward = cache["forward"]
    return lambda: forward(params, state, batch).block_until_ready()


def latencies(
    runs: dict[str, Run], batch_size: int, seq_len: int = 32, rounds: int = 5, repeats: int = 10
) -> dict[str, float]:
    """Median seconds of one forward of each run on a `batch_size` batch. Every run is compiled
    and warmed up first; then `rounds` rounds time `repeats` forwards of each run in turn, so a
    slow spell of the machine falls on all of them alike; the median over all timings."""
    forwards = {}
    for name, run in runs.items():
        forwards[name] = compiled_forward(run, example_inputs(run, batch_size, seq_len))
        forwards[name]()  # warm up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, forward in forwards.items():
            for _ in range(repeats):
                started = time.perf_counter()
                forward()
                times[name].append(time.perf_counter() - started)
    return {name: float(np.median(t)) for name, t in times.items()}
