"""The model contract the training core relies on.

The core never touches Flax modules directly: it sees a nested dict of params, a dict of model
state (batch-norm statistics, possibly empty) and the pure `Model.apply`. Every architecture in
`ftjax.models` returns a `Model`; anything else that fills the same fields trains the same way.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
from flax import traverse_util

from ftjax.models import layers

__all__ = ["Params", "State", "Batch", "PACKED_KEYS", "flat_paths", "Model", "carried", "packed"]

Params = dict[str, Any]
State = dict[str, Any]
Batch = Mapping[str, jax.Array]
# What a packed batch (`ftjax.data.packing`) adds to a text model's inputs, in this order.
PACKED_KEYS = ("position_ids", "packed_at")


def flat_paths(tree: Mapping[str, Any]) -> list[str]:
    """'/'-joined leaf paths of a nested dict, in traversal order."""
    return ["/".join(k) for k in traverse_util.flatten_dict(tree)]


@dataclasses.dataclass(frozen=True)
class Model:
    """A Flax module plus what the engine needs to train it.

    Attributes:
      module: the Linen module; `module.apply(variables, *inputs, train=...)` returns logits.
      input_keys: batch keys passed positionally to the module, e.g. ("input_ids", "attention_mask").
      layer_groups: the natural parameter groups in depth order, input side first, head last:
        (name, regex) pairs whose regexes fully match '/'-joined param paths, one group per path.
      head_pattern: regex for the task head (what `dont_load` names when the head is replaced).
      cpu_compiler_options: XLA options `ftjax.compile` compiles this model's steps with on CPU,
        as (name, value) pairs (see `ftjax.compile.compile_lowered`).
    """

    module: nn.Module
    input_keys: tuple[str, ...]
    layer_groups: tuple[tuple[str, str], ...]
    head_pattern: str = "head/.*"
    cpu_compiler_options: tuple[tuple[str, Any], ...] = ()

    def init(self, rng: jax.Array, batch: Batch) -> tuple[Params, State]:
        variables = self.module.init({"params": rng}, *self._inputs(batch), train=False)
        variables = dict(variables)
        params = variables.pop("params")
        return params, variables

    def apply(
        self,
        params: Params,
        state: State,
        batch: Batch,
        *,
        train: bool,
        rng: jax.Array | None = None,
        frozen: frozenset[str] = frozenset(),
    ) -> tuple[jax.Array, State]:
        """Logits and the updated model state.

        `frozen` holds the '/'-joined paths of frozen params; modules entirely frozen run in
        inference mode (BatchNorm on running averages, no dropout). Call it at trace time with a
        static set: each phase's compiled step closes over its own.
        """
        scopes = layers.fully_frozen_scopes(flat_paths(params), frozen) if frozen else frozenset()
        rngs = {"dropout": rng} if (train and rng is not None) else {}
        mutable = list(state) if (train and state) else False
        module = self.module_for(train, frozen, params)
        with layers.frozen_scopes(scopes):
            out = module.apply(
                {"params": self.module_params(params, batch), **state},
                *self._inputs(batch),
                train=train,
                rngs=rngs,
                mutable=mutable,
            )
        if mutable:
            logits, new_state = out
            return logits, dict(new_state)
        return out, state

    def module_for(self, train: bool, frozen: frozenset[str], params: Params) -> nn.Module:
        """The module `apply` runs (one, here; a LoRA model picks the one with adapter dropout
        when the step trains an adapter, `ftjax.lora.LoraModel`)."""
        return self.module

    def module_params(self, params: Params, batch: Batch) -> Any:
        """`params` as the module reads them (the same tree, here; a LoRA model on a quantised
        base rebuilds qwix's quantised-array nodes from plain arrays, `ftjax.lora.LoraModel`)."""
        return params

    def _inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
        missing = [k for k in self.input_keys if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing} needed by the model; it has {sorted(batch)}")
        return tuple(batch[k] for k in self.input_keys)


def carried(model: Model) -> dict[str, Any]:
    """The fields a wrapping Model (LoRA, int8, QAT) keeps from the model it wraps."""
    return {
        "input_keys": model.input_keys,
        "layer_groups": model.layer_groups,
        "head_pattern": model.head_pattern,
        "cpu_compiler_options": model.cpu_compiler_options,
    }


def packed(model: Model) -> Model:
    """`model` reading packed batches (`ftjax.data.packing`): its inputs, then `PACKED_KEYS`.

    The module's `__call__` must take those next, after its own inputs (the BERT-family encoders
    do); anything else is refused with the reason.
    """
    module = type(model.module).__name__
    names = [
        n
        for n, p in inspect.signature(type(model.module).__call__).parameters.items()
        if p.kind is p.POSITIONAL_OR_KEYWORD and n != "self"
    ]
    keys = (*model.input_keys, *PACKED_KEYS)
    if tuple(names[: len(keys)]) != keys:
        raise ValueError(
            f"{module} does not read packed batches (data.pack): it takes {names}, packing needs "
            f"{list(keys)} (a BERT-family encoder; DeBERTa's relative positions and image models "
            "cannot pack): set data.pack=False"
        )
    return dataclasses.replace(model, input_keys=keys)
