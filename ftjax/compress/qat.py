"""Quantisation-aware fine-tuning (QAT): a run that trains through the int8 model's forward.

    python -m ftjax.main --config=configs/minilm_rotten_tomatoes.py --workdir=runs/rt_qat \
        --config.qat.weights=int8
    python -m ftjax.compress --workdir=runs/rt_qat --out=runs/rt_qat_int8 --method=int8

With `config.qat.weights='int8'` every train and eval step runs the model as
`ftjax.compress.quantize` would store it: the Dense kernels the pattern selects through qwix's
`QtProvider` (fake quantisation: the same per-output-channel absmax int8 round trip as its
`PtqProvider`, gradients passed straight through to the float kernels), and with `embeddings`
or on a convolutional net the embedding tables / convolution kernels put through the same
round trip as `QuantizedModel` dequantises them. The params stay float32 and train as usual
(groups, phases, LoRA-free); the weights learn to sit well on the int8 grid. The run's record
keeps `qat`, so evaluate and predict on the workdir run the quantised forward, and
`python -m ftjax.compress --method=int8` (same pattern and activations) writes the int8 model,
whose logits are the QAT run's own.

Not here: the int8 storage itself (`ftjax.compress.quantize`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import qwix
from flax import traverse_util

from ftjax.compress.quantize import QuantizeError, QuantSpec, conv_modules, round_trip_own, selected
from ftjax.lora import QwixModel
from ftjax.models.base import Batch, Model, Params, carried

__all__ = ["QatModel", "with_qat", "qat_spec"]


@dataclasses.dataclass(frozen=True)
class QatModel(Model):
    """A Model whose forward is the int8 model's (`spec`), on float params that train; `base`
    is the float model."""

    spec: QuantSpec | None = None
    base: Model | None = None

    def module_params(self, params: Params, batch: Batch) -> Any:
        # Straight through, on the round-tripped leaves only (the Dense kernels are qwix's): the
        # forward sees the int8 values, the gradient is the identity.
        if trip := round_trip_own(params, self.spec):
            flat = traverse_util.flatten_dict(dict(params))
            flat.update({k: flat[k] + jax.lax.stop_gradient(q - flat[k]) for k, q in trip.items()})
            params = traverse_util.unflatten_dict(flat)
        return super().module_params(params, batch)


def qat_spec(params: Params, weights: str, activations: str | None, pattern: str, embeddings: bool):
    """The QuantSpec a QAT run trains through, its Dense `modules` found in `params`; the
    convolution kernels too when the model has any (a CNN is nearly all of them)."""
    spec = QuantSpec(weights, activations, pattern, embeddings=embeddings)
    return selected(dataclasses.replace(spec, convs=bool(conv_modules(params))), params)


def with_qat(model: Model, spec: QuantSpec) -> QatModel:
    """`model` (a plain one) computing through `spec`'s quantisation (`qat_spec` made it)."""
    if isinstance(model, QwixModel | QatModel):
        raise QuantizeError(
            f"quantisation-aware training takes a plain model, not a {type(model).__name__}: "
            "leave config.peft.lora.targets empty with config.qat.weights set"
        )
    return QatModel(
        module=qwix.quantize_model(model.module, qwix.QtProvider([spec.rule()])),
        **carried(model),
        spec=spec,
        base=model,
    )
