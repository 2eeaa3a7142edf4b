"""`ftjax.compile.StepCache`: one trace at a time in the process while XLA compiles overlap, and
`compile_ahead` tracing on the caller's thread (a failed trace raising later is tested in
tests/test_step.py). qwix (LoRA, int8, QAT) traces by patching `jax.numpy` process-wide, so two
traces at once broke a LoRA run's two-thread precompile in CI
(`KeyError: 'jax.numpy.asarray.__code__'`)."""

import threading
import time

import jax
import jax.numpy as jnp
import pytest

from ftjax import sharding
from ftjax.compile import StepCache


class _Tracer:
    """Lowering thunks that record how many run at once and on which threads."""

    def __init__(self):
        self.active = self.peak = 0
        self.threads: set[int] = set()
        self._lock = threading.Lock()

    def thunk(self, i: int):
        def lower() -> jax.stages.Lowered:
            with self._lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
                self.threads.add(threading.get_ident())
            time.sleep(0.05)  # releases the GIL: a second thread would trace meanwhile
            with self._lock:
                self.active -= 1
            return jax.jit(lambda x: jnp.sin(x) * i).lower(jnp.ones((8,)))

        return lower


@pytest.fixture
def mesh():
    return sharding.make_mesh()


def test_compile_many_traces_one_step_at_a_time_and_compiles_them_all(mesh):
    tracer, cache = _Tracer(), StepCache()
    assert cache.compile_many([(i, tracer.thunk(i)) for i in range(4)], mesh, threads=4) == 4
    assert tracer.peak == 1 and len(tracer.threads) > 1  # several threads, never two at once
    assert cache.count == 4
    assert float(cache[3](jnp.ones((8,)))[0]) == pytest.approx(3 * float(jnp.sin(1.0)))


def test_compile_ahead_traces_on_the_callers_thread_and_compiles_behind_it(mesh):
    tracer, cache = _Tracer(), StepCache()
    cache.compile_ahead([(i, tracer.thunk(i)) for i in range(3)], mesh)
    assert tracer.threads == {threading.get_ident()}
    cache.finish_ahead()
    assert cache.count == 3 and all(i in cache for i in range(3))
