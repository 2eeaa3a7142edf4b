"""int8 post-training quantisation (PTQ) of a finished run, through qwix, written as a new run.

    summary = quantize_run("runs/minilm_rt", "runs/minilm_rt_int8")
    python -m ftjax.evaluate --workdir=runs/minilm_rt_int8 --data.name=rotten_tomatoes
    python -m ftjax.predict --workdir=runs/minilm_rt_int8 --input=reviews.csv
    quantize_run("runs/lite0_fmnist", "runs/lite0_fmnist_int8", convs=True)  # a CNN's convs too

Every Dense layer whose module path ('/'-joined, e.g. `encoder/layer_3/attention/self/query`)
fully matches `pattern` (default: all of them, encoder, pooler and head; a `ftjax.lora.TARGETS`
name such as 'all_linear' works too) gets its kernel stored as int8 with one absmax scale per
output channel (qwix's `PtqProvider`: scale = max|W[:, j]| / 127.5, qvalue = round(W / scale) in
[-128, 127]), and computes with it: weights only by default, or with `activations="int8"` those
layers' inputs too, quantised on the fly per token (dynamic range). LayerNorms, biases, the
attention products and batch norms stay float32. The Dense kernels shrink to about 25% and the
whole params less: MiniLM-L6 (half of it word embeddings) to 65%, or 25% with its embeddings
(measured; BERT-base to about 41% by its shapes).

Two kinds of weight qwix's weight-only PTQ cannot take are stored int8 here, with the same
absmax arithmetic (`qwix.quantize`), and dequantised to float32 in the forward, so they shrink
on disk but compute in float: the embedding tables with `embeddings=True` (one scale per row;
qwix intercepts no lookup), and every convolution kernel with `convs=True` (a 4-D `kernel`,
`.../kernel/{qvalue (int8), scale (float32, (1, 1, 1, out))}`, one scale per output channel;
a depthwise kernel's (k, k, 1, C) per channel). qwix's PTQ conv quantises a convolution's
inputs whenever it quantises its kernel (int8 activations only), and it sees neither
ftjax's 1x1 convolutions (a dot on a slice of the kernel, `efficientnet.PointwiseConv`) nor
its depthwise ones (shifted multiply-adds, `ftjax.ops.depthwise`). A convolutional net is
nearly all convolution kernels: with `convs=True` its params shrink to 26.6% (EfficientNet-Lite0
at 10 classes, 3.38M params; its batch-norm scales and biases, float32, are 1.2% of them),
26.9% (MobileNetV2) and 25.3% (ResNet-50), by their shapes; without it only its Dense head is
quantised and it saves next to nothing. The record lists the Dense layers the pattern selected
(`QuantSpec.modules`), and only those are rebuilt through qwix.

`out` is an ordinary ftjax workdir, written by `ftjax.compress.derived.write_run` (new or an
empty folder, written aside and renamed into place): `inference/` (the source's record with a
`quantization` entry, `QuantSpec.to_dict()`, which `ftjax.inference.model_from_record` rebuilds
as a `QuantizedModel`), `best/` and `final/` (both the one quantised checkpoint, at its source
step), config.json, run.json and results.json, whose `derived_from` holds the method ('int8'),
the spec, `merged_lora` and `sizes`. The params stay plain arrays, a quantised kernel as
`.../kernel/{qvalue (int8), scale (float32, (1, out))}`, as a LoRA run's int8 base
(`ftjax.lora.QwixModel`).

A LoRA run's adapters are merged into their kernels first (`ftjax.lora.merge`, an int8 base
dequantised), so the quantised model is the plain architecture; results.json's
`derived_from.merged_lora` keeps the LoRA settings. A run already quantised is refused.

Exports of the quantised workdir: `--format=flax` keeps int8 (safetensors holds int8 arrays
and `load_flax_export` rebuilds the `QuantizedModel`); `--format=hf` writes the dequantised
float32 weights (transformers' classes have no int8 Dense), with a note that the export is not
smaller: its outputs are the int8 model's when only weights were quantised.

Not here: a command line (`python -m ftjax.compress`), distillation and pruning (the other
`ftjax.compress` modules).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import traverse_util

from ftjax import inference, lora
from ftjax.compress import derived
from ftjax.inference import Run
from ftjax.lora import QwixModel
from ftjax.models.base import Model, carried
from ftjax.pretrained.load import example_batch

__all__ = [
    "QTYPES",
    "ALL_DENSE",
    "QuantizeError",
    "QuantSpec",
    "QuantizedModel",
    "with_quantization",
    "selected",
    "round_trip_own",
    "quantized",
    "dequantized",
    "quantized_kernels",
    "dense_modules",
    "conv_modules",
    "stored_bytes",
    "sizes",
    "quantize_run",
]

QTYPES = ("int8",)
ALL_DENSE = ".*"


class QuantizeError(ValueError):
    """A run cannot be quantised as asked; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """What to quantise: `weights` (the Dense kernels' qtype), `activations` (None: float
    inputs; 'int8': those layers' inputs too, per token on the fly) and `pattern`, a regex
    fully matching the module paths of the Dense layers to quantise, or a name in
    `ftjax.lora.TARGETS` ('all_linear': the encoder's). `modules` are the Dense layers' paths
    it selected in the run's model (`quantized` fills them in): the record names exactly what
    is int8, and no other layer running a dot_general (EfficientNet's 1x1 convolutions) is
    touched. Without them, the pattern applies to whatever qwix intercepts. `embeddings` and
    `convs` store the embedding tables (one scale per row) and every convolution kernel (a 4-D
    `kernel`: nn.Conv, the 1x1 convolutions done as dots, the depthwise ones; one scale per
    output channel) int8 too, dequantised in the forward: those ops are not qwix's weight-only
    PTQ (see the module docstring)."""

    weights: str = "int8"
    activations: str | None = None
    pattern: str = ALL_DENSE
    modules: tuple[str, ...] = ()
    embeddings: bool = False  # also the embedding tables, int8 with one scale per row
    convs: bool = False  # also the convolution kernels, int8 with one scale per output channel

    def __post_init__(self):
        object.__setattr__(self, "modules", tuple(self.modules))  # a record holds a list
        if self.weights not in QTYPES:
            raise QuantizeError(f"weights is {self.weights!r}; use one of {list(QTYPES)}")
        if self.activations not in (None, *QTYPES):
            raise QuantizeError(
                f"activations is {self.activations!r}; use None (float) or one of {list(QTYPES)}"
            )
        try:
            re.compile(self.regex)
        except re.error as e:
            raise QuantizeError(f"pattern {self.pattern!r} is not a valid regex ({e})") from None

    @property
    def regex(self) -> str:
        return lora.TARGETS.get(self.pattern, self.pattern)

    def rule(self) -> qwix.QuantizationRule:
        """qwix's rule: per-output-channel absmax, on the Dense layers' dot_general only."""
        selected = "|".join(re.escape(m) for m in self.modules) if self.modules else self.regex
        return qwix.QuantizationRule(
            module_path=selected,
            op_names=("dot_general",),  # not the attention einsums, not convolutions
            weight_qtype=self.weights,
            act_qtype=self.activations,
        )

    def provider(self) -> qwix.PtqProvider:
        """qwix's PTQ provider (int8 storage) of `rule`."""
        return qwix.PtqProvider([self.rule()])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class QuantizedModel(QwixModel):
    """A Model whose module runs through qwix PTQ: the selected Dense kernels are int8 params
    (`kernel/{qvalue,scale}`); `base` is the float model (what `dequantized` params load into)."""

    error: ClassVar[type[ValueError]] = QuantizeError
    hint: ClassVar[str] = "QuantizedModel.quantize makes them from float params"
    spec: QuantSpec | None = None
    base: Model | None = None

    # Embedding tables and convolution kernels (`spec.embeddings`, `spec.convs`): stored
    # `{qvalue,scale}`, dequantised in the forward; the Dense kernels are QwixModel's.
    def init(self, rng, batch):
        params, state = super().init(rng, batch)
        return _quantize_own(params, self.spec), state

    def module_params(self, params, batch):
        return super().module_params(_dequantize_own(params, self.spec), batch)

    def quantize(self, params, batch):
        return _quantize_own(super().quantize(params, batch), self.spec)


def _own_axis(key: tuple[str, ...], ndim: int, spec: QuantSpec) -> int | None:
    """The axis with one scale per index of a leaf stored int8 here rather than by qwix, or
    None: an embedding table's rows (axis 0), a convolution kernel's (kh, kw, in, out) output
    channels (axis 3; a depthwise kernel's (k, k, 1, C) channels)."""
    if spec.embeddings and key[-1] == "embedding" and ndim == 2:
        return 0
    if spec.convs and key[-1] == "kernel" and ndim == 4:
        return 3
    return None


def _flat_leaves(params: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    """Leaves by path, a stored int8 {qvalue, scale} pair counting as one leaf."""
    return traverse_util.flatten_dict(
        dict(params),
        is_leaf=lambda _, x: not isinstance(x, Mapping) or set(x) == {"qvalue", "scale"},
    )


def _quantize_own(params: Mapping[str, Any], spec: QuantSpec) -> dict[str, Any]:
    """The float leaves `_own_axis` selects as int8 values with a float32 absmax scale per
    index of that axis (qwix's arithmetic, as its Dense kernels get)."""
    return _quantize_leaves(params, spec) if spec.embeddings or spec.convs else params


# One compiled program for all of them: op by op, each kernel shape compiles its own handful
# of ops (an EfficientNet-Lite's ~50 kernels took 18 s on CPU instead of 4).
@functools.partial(jax.jit, static_argnums=1)
def _quantize_leaves(params: Mapping[str, Any], spec: QuantSpec) -> dict[str, Any]:
    flat = _flat_leaves(params)
    for k, v in flat.items():
        axis = None if isinstance(v, Mapping) else _own_axis(k, v.ndim, spec)
        if axis is not None:
            q = qwix.quantize(v, "int8", channelwise_axes=[axis], scale_dtype=jnp.float32)
            flat[k] = {"qvalue": q.qvalue, "scale": q.scale}
    return traverse_util.unflatten_dict(flat)


def _dequantize_own(params: Mapping[str, Any], spec: QuantSpec) -> dict[str, Any]:
    flat = _flat_leaves(params)
    for k, v in flat.items():
        if isinstance(v, Mapping) and _own_axis(k, v["qvalue"].ndim, spec) is not None:
            flat[k] = v["qvalue"].astype(jnp.float32) * v["scale"]
    return traverse_util.unflatten_dict(flat)


def round_trip_own(params: Mapping[str, Any], spec: QuantSpec) -> dict[tuple[str, ...], Any]:
    """The float leaves `spec.embeddings` / `spec.convs` select, by path, as the int8 model
    computes with them (quantised, then dequantised): what quantisation-aware training
    (`ftjax.compress.qat`) puts in their place. Empty when it selects none."""
    picked = {
        k: v
        for k, v in _flat_leaves(params).items()
        if not isinstance(v, Mapping) and _own_axis(k, v.ndim, spec) is not None
    }
    if not picked:
        return {}
    trip = _dequantize_own(_quantize_leaves(traverse_util.unflatten_dict(picked), spec), spec)
    return traverse_util.flatten_dict(trip)


def with_quantization(model: Model, spec: QuantSpec) -> QuantizedModel:
    """`model` with the Dense layers `spec` selects quantised (a plain model only)."""
    if isinstance(model, QwixModel):
        raise QuantizeError(
            f"cannot quantise a {type(model).__name__}: merge its LoRA adapters first "
            "(ftjax.lora.merge and the LoraModel's base)"
        )
    return QuantizedModel(
        module=qwix.quantize_model(model.module, spec.provider()),
        **carried(model),
        spec=spec,
        base=model,
    )


# ----------------------------------------------------------------------------- params


def quantized_kernels(params: Mapping[str, Any]) -> list[str]:
    """'/'-joined paths of the kernels stored quantised (e.g. `head/kernel`)."""
    flat = traverse_util.flatten_dict(dict(params))
    return sorted({"/".join(k[:-1]) for k in flat if k[-1] == "qvalue"})


def stored_bytes(params: Mapping[str, Any], paths: list[str] | None = None) -> int:
    """Bytes of the params as stored (int8 values, their scales, the float rest); with
    `paths`, of those entries only (a kernel's path covers its qvalue and scale)."""
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(params)).items()}
    keep = lambda p: paths is None or any(p == q or p.startswith(q + "/") for q in paths)
    return sum(
        int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for p, v in flat.items() if keep(p)
    )


def sizes(float_params: Mapping[str, Any], quantized_params: Mapping[str, Any]) -> dict[str, int]:
    """Stored bytes before and after, of all params and of the quantised kernels alone."""
    kernels = quantized_kernels(quantized_params)
    return {
        "float_bytes": stored_bytes(float_params),
        "quantized_bytes": stored_bytes(quantized_params),
        "float_kernel_bytes": stored_bytes(float_params, kernels),
        "quantized_kernel_bytes": stored_bytes(quantized_params, kernels),
    }


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MB"


# ----------------------------------------------------------------------------- runs


def _float_run(run: Run) -> Run:
    """`run` as the plain model: a LoRA run's adapters merged, a QAT run's float params on the
    model without fake quantisation."""
    if run.record.get("qat"):
        return dataclasses.replace(dequantized(run), record={**run.record, "qat": None})
    if not run.record.get("lora"):
        return run
    spec = lora.LoraSpec(**run.record["lora"])
    record = {**run.record, "lora": None}
    return dataclasses.replace(
        run, model=run.model.base, params=lora.merge(run.params, spec), record=record
    )


def dense_modules(params: Mapping[str, Any]) -> list[str]:
    """Module paths of the Dense layers in `params`: those with a 2-D `kernel`."""
    return _kernel_modules(params, 2)


def conv_modules(params: Mapping[str, Any]) -> list[str]:
    """Module paths of the convolutions in `params`: those with a 4-D `kernel`."""
    return _kernel_modules(params, 4)


def _kernel_modules(params: Mapping[str, Any], ndim: int) -> list[str]:
    flat = traverse_util.flatten_dict(dict(params))
    return sorted("/".join(k[:-1]) for k, v in flat.items() if k[-1] == "kernel" and v.ndim == ndim)


def selected(spec: QuantSpec, params: Mapping[str, Any]) -> QuantSpec:
    """`spec` with `modules`, the Dense layers of `params` its pattern fully matches; a
    QuantizeError when it matches none, or asks for convs of a model without any."""
    dense = dense_modules(params)
    modules = tuple(m for m in dense if re.fullmatch(spec.regex, m))
    if not modules:
        raise QuantizeError(
            f"pattern {spec.pattern!r} matches no Dense layer of the model; it must fully match "
            f"module paths such as {dense[:4]} (default {ALL_DENSE!r}: all of them)"
        )
    if spec.convs and not conv_modules(params):
        raise QuantizeError(
            "convs=True, but the model has no convolution (no 4-D `kernel`): quantise its "
            "Dense layers without it"
        )
    return dataclasses.replace(spec, modules=modules)


def quantized(run: Run, spec: QuantSpec) -> Run:
    """The loaded `run` (LoRA merged) with the Dense kernels `spec` selects quantised; its
    record carries `quantization`, the spec with its `modules`."""
    if run.record.get("quantization"):
        raise QuantizeError(
            f"{run.workdir} is already quantised ({run.record['quantization']}); quantise the "
            "float run it came from (its results.json names it under derived_from)"
        )
    run = _float_run(run)
    spec = selected(spec, run.params)
    model = with_quantization(run.model, spec)
    params = model.quantize(run.params, example_batch(model, run.preprocessing))
    record = {**run.record, "quantization": spec.to_dict()}
    return dataclasses.replace(run, model=model, params=params, record=record)


def dequantized(run: Run) -> Run:
    """A quantised `run` as the float model with its kernels dequantised, a QAT run as its float
    params on the model without fake quantisation (other runs as they are): what the PyTorch
    export formats write. The record stays as it was (it says what the weights were), as
    `ftjax.export.hf.merge_lora` keeps a LoRA run's."""
    if run.record.get("qat"):  # float params already: the model without fake quantisation
        return dataclasses.replace(run, model=run.model.base)
    if not isinstance(run.model, QuantizedModel):
        return run
    params = lora.dequantize_params(
        _dequantize_own(run.params, run.model.spec), run.model.spec.weights
    )
    return dataclasses.replace(run, model=run.model.base, params=params)


def quantize_run(
    workdir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    weights: str = "int8",
    activations: str | None = None,
    pattern: str = ALL_DENSE,
    checkpoint: str = "best",
    embeddings: bool = False,
    convs: bool = False,
) -> dict[str, Any]:
    """Quantises the `checkpoint` of the finished run in `workdir` and writes it as the run
    `out` (see the module docstring); prints one line and returns a summary (paths, spec,
    quantised kernels, sizes in bytes)."""
    spec = QuantSpec(weights, activations, pattern, embeddings=embeddings, convs=convs)
    workdir = Path(workdir).absolute()
    derived.check_out(out, workdir)  # before the (slow) load
    source = inference.load_run(workdir, checkpoint, finished=True)
    base = _float_run(source)
    run = quantized(base, spec)
    size = sizes(base.params, run.params)
    lora_spec = source.record.get("lora") or None
    method = {"method": "int8", **run.record["quantization"], "merged_lora": lora_spec}
    out = derived.write_run(source, run, out, {**method, "sizes": size})
    kernels = quantized_kernels(run.params)
    print(
        f"quantised {len(kernels)} kernels of {workdir} ({checkpoint}, step {source.step}) "
        f"to {spec.weights}{' with int8 activations' if spec.activations else ''}: params "
        f"{_mb(size['float_bytes'])} -> {_mb(size['quantized_bytes'])}; written to {out}",
        flush=True,
    )
    return {
        "workdir": str(workdir),
        "out": str(out),
        "checkpoint": checkpoint,
        "step": source.step,
        "quantization": run.record["quantization"],
        "merged_lora": bool(source.record.get("lora")),
        "kernels": kernels,
        "sizes": size,
    }
