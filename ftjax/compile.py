"""The compiled-step cache: ahead-of-time compiles, compile counting, backend compiler options,
and giving back the host memory compiling leaves behind.

`StepCache` holds compiled executables by key (e.g. (phase, batch shapes)), each compiled once
from a `jax.stages.Lowered` with the model's XLA:CPU options (`Model.cpu_compiler_options`);
`compile_many` compiles several at once on threads (XLA compiles one executable on one core);
`compile_ahead` compiles on a background thread while the caller goes on (the next phase's steps
while this phase trains). Tracing (`lower()`) runs one at a time in the process and, for
`compile_ahead`, on the caller's thread: qwix (LoRA, int8, QAT) traces a model by patching
`jax.numpy` functions process-wide, which another thread tracing at the same time can see half
undone (`KeyError: 'jax.numpy.asarray.__code__'`). Tracing holds the GIL anyway; the XLA compiles,
which release it, still overlap.
After compiling, `release_host_memory` returns freed glibc heap to the OS.

Memory release touches only memory nobody holds: it clears JAX's caches only where the process
declared itself ftjax's (`own_process`: the command line, the benchmarks), since in a user's script
`jax.clear_caches` would also evict their own jitted functions, which then retrace and recompile.

Not here: what a step computes (`ftjax.steps`), which steps a plan needs and their shardings
(`ftjax.phase_steps`).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import gc
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import jax
from jax.sharding import Mesh

__all__ = ["StepCache", "compile_lowered", "own_process", "release_host_memory"]

_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only


def compile_lowered(
    lowered: jax.stages.Lowered, mesh: Mesh, cpu_options: Sequence[tuple[str, Any]] = ()
) -> jax.stages.Compiled:
    """`lowered.compile()`, with the XLA options `cpu_options` when `mesh` is on CPU (a model's
    `Model.cpu_compiler_options`); an XLA that lacks one of them compiles with its defaults."""
    options = dict(cpu_options)
    if not options or mesh.devices.flat[0].platform != "cpu":
        return lowered.compile()
    try:
        return lowered.compile(options)
    except jax.errors.JaxRuntimeError as e:
        if "No such compile option" not in str(e):
            raise
        return lowered.compile()


_OWNS_PROCESS = False
_BACKGROUND = 0  # compiles running on background threads (`StepCache.compile_ahead`)
_BACKGROUND_LOCK = threading.Lock()
_TRACING = threading.Lock()  # one `lower()` at a time in the process (see the module docstring)


def _trace(lower: Callable[[], jax.stages.Lowered]) -> jax.stages.Lowered:
    with _TRACING:
        return lower()


def own_process(owned: bool = True) -> None:
    """Declare that every jitted function in this process is ftjax's (the command line, the
    benchmarks), so `release_host_memory` may also clear JAX's tracing caches.

    Those caches hold a jaxpr per internal jit and shape seen while tracing a model, dead weight
    once every step is compiled and held (tens of MiB: MiniLM's full-step peak RSS is ~60 MiB
    higher with them). In a user's script they also hold the user's own jitted functions, which
    would retrace and recompile, so library use leaves them alone (the default).
    """
    global _OWNS_PROCESS
    _OWNS_PROCESS = owned


def release_host_memory() -> None:
    """Return the heap that tracing and compiling freed to the OS, before a new step first runs.

    XLA:CPU compiles through hundreds of MiB of small allocations that glibc keeps mapped after
    they are freed, while a step's temporaries are fresh large mappings, so without the trim both
    count towards peak memory.
    """
    if _OWNS_PROCESS and not _BACKGROUND:  # not while a background compile runs
        jax.clear_caches()
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class StepCache:
    """Compiled executables by key, each compiled once; `count` says how many were compiled."""

    def __init__(self, cpu_options: Sequence[tuple[str, Any]] = ()):
        self.cpu_options = tuple(cpu_options)
        self.count = 0
        self._compiled: dict[Hashable, jax.stages.Compiled] = {}
        self._lock = threading.Lock()  # compile_many compiles from several threads
        self._ahead: concurrent.futures.Future | None = None  # compile_ahead's job

    def __contains__(self, key: Hashable) -> bool:
        return key in self._compiled

    def __getitem__(self, key: Hashable) -> jax.stages.Compiled:
        return self._compiled[key]

    def items(self) -> Iterator[tuple[Hashable, jax.stages.Compiled]]:
        return iter(list(self._compiled.items()))

    def compile(
        self,
        key: Hashable,
        lower: Callable[[], jax.stages.Lowered],
        mesh: Mesh,
        *,
        release: bool = True,
    ) -> jax.stages.Compiled:
        """Compile `lower()` for `mesh` and keep it under `key` (replacing any earlier one)."""
        return self._compile_lowered(key, _trace(lower), mesh, release=release)

    def _compile_lowered(
        self, key: Hashable, lowered: jax.stages.Lowered, mesh: Mesh, *, release: bool
    ) -> jax.stages.Compiled:
        compiled = compile_lowered(lowered, mesh, self.cpu_options)
        with self._lock:
            self._compiled[key] = compiled
            self.count += 1
        if release:
            release_host_memory()
        return compiled

    def compile_many(
        self,
        todo: Sequence[tuple[Hashable, Callable[[], jax.stages.Lowered]]],
        mesh: Mesh,
        threads: int = 2,
        *,
        release: bool = True,
    ) -> int:
        """Compile every (key, lower) not compiled yet, `threads` at a time; returns how many."""
        self.finish_ahead()
        todo = [(k, lower) for k, lower in dict(todo).items() if k not in self]
        with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(lambda kl: self.compile(*kl, mesh, release=False), todo))
        if todo and release:
            release_host_memory()
        return len(todo)

    def compile_ahead(
        self, todo: Sequence[tuple[Hashable, Callable[[], jax.stages.Lowered]]], mesh: Mesh
    ) -> None:
        """Trace `todo` here, then compile it one at a time on a background thread and return, so
        a later phase compiles while this one trains; the next `compile_many` (or `finish_ahead`)
        waits for it and raises what went wrong, tracing included."""
        global _BACKGROUND
        self.finish_ahead()
        todo = [(k, lower) for k, lower in dict(todo).items() if k not in self]
        if not todo:
            return
        try:
            lowered = [(key, _trace(lower)) for key, lower in todo]
        except Exception as e:  # raised where the steps are needed, as a compile error would be
            self._ahead = concurrent.futures.Future()
            self._ahead.set_exception(e)
            return
        with _BACKGROUND_LOCK:
            _BACKGROUND += 1

        def work() -> None:
            global _BACKGROUND
            try:
                for key, low in lowered:
                    self._compile_lowered(key, low, mesh, release=False)
            finally:
                with _BACKGROUND_LOCK:
                    _BACKGROUND -= 1

        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ftjax-compile-ahead")
        self._ahead = pool.submit(work)
        pool.shutdown(wait=False)  # the thread ends with its job

    def finish_ahead(self) -> None:
        """Wait for the background compile `compile_ahead` started (re-raising its error), then
        give back the host memory it left."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.result()
            release_host_memory()
