"""Layers whose train/inference behaviour follows the phase's frozen set.

Frozen means frozen: a BatchNorm whose scale and bias are frozen normalises with its running
averages and leaves them unchanged, and a Dropout whose enclosing module is entirely frozen is
the identity (a frozen backbone is a deterministic feature extractor, which is also what makes
feature caching exact). The engine states which module scopes are entirely frozen with
`frozen_scopes(...)` around `Module.apply`; it is read at trace time, so it costs nothing at run
time and every phase's compiled step bakes in its own answer.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["ACTIVATIONS", "fully_frozen_scopes", "frozen_scopes", "BatchNorm", "Dropout"]

# Hugging Face `hidden_act` names -> Flax functions, shared by the HF-layout models.
ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
    "tanh": jnp.tanh,
}

_FROZEN_SCOPES: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "ftjax_frozen_scopes", default=frozenset()
)


def fully_frozen_scopes(param_paths: Iterable[str], frozen_paths: Iterable[str]) -> frozenset[str]:
    """Module scopes ('a/b') all of whose parameters are frozen, from '/'-joined leaf paths."""
    frozen_paths = frozenset(frozen_paths)
    has_trainable: set[str] = set()
    scopes: set[str] = set()
    for path in param_paths:
        parts = path.split("/")[:-1]
        prefixes = ["/".join(parts[:i]) for i in range(len(parts) + 1)]
        scopes.update(prefixes)
        if path not in frozen_paths:
            has_trainable.update(prefixes)
    return frozenset(scopes - has_trainable)


@contextlib.contextmanager
def frozen_scopes(scopes: frozenset[str]) -> Iterator[None]:
    """Within this context, layers under `scopes` run in inference mode."""
    token = _FROZEN_SCOPES.set(frozenset(scopes))
    try:
        yield
    finally:
        _FROZEN_SCOPES.reset(token)


def _is_frozen(scope: tuple[str, ...]) -> bool:
    return "/".join(scope) in _FROZEN_SCOPES.get()


class BatchNorm(nn.BatchNorm):
    """`nn.BatchNorm` that uses running averages when not training or when frozen."""

    def __call__(self, x, *, train: bool):  # type: ignore[override]
        return super().__call__(x, use_running_average=not train or _is_frozen(self.scope.path))


class Dropout(nn.Module):
    """Dropout that is the identity when not training or when its parent module is frozen."""

    rate: float

    @nn.compact
    def __call__(self, x, *, train: bool):
        if not train or self.rate == 0.0 or _is_frozen(self.scope.path[:-1]):
            return x
        keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
