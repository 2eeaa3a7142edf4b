"""int8 post-training quantisation (PTQ) of a finished run, through qwix, written as a new run.

    summary = quantize_run("runs/minilm_rt", "runs/minilm_rt_int8")
    python -m ftjax.evaluate --workdir=runs/minilm_rt_int8 --data.name=rotten_tomatoes
    python -m ftjax.predict --workdir=runs/minilm_rt_int8 --input=reviews.csv

Every Dense layer whose module path ('/'-joined, e.g. `encoder/layer_3/attention/self/query`)
fully matches `pattern` (default: all of them, encoder, pooler and head; a `ftjax.lora.TARGETS`
name such as 'all_linear' works too) gets its kernel stored as int8 with one absmax scale per
output channel (qwix's `PtqProvider`: scale = max|W[:, j]| / 127.5, qvalue = round(W / scale) in
[-128, 127]), and computes with it: weights only by default, or with `activations="int8"` those
layers' inputs too, quantised on the fly per token (dynamic range). LayerNorms, biases, the
attention products and convolutions stay float32, and so do the embedding tables unless
`embeddings=True` (int8, one absmax scale per row, dequantised in the forward: qwix intercepts
no lookup). The Dense kernels shrink to about 25% and the whole params less: MiniLM-L6 (half of
it word embeddings) to 65%, or 25% with its embeddings (measured; BERT-base to about 41% by its
shapes). A convolutional net's only Dense is its head, so quantising one saves next to nothing. The record lists the Dense layers the pattern selected
(`QuantSpec.modules`), and only those are rebuilt int8.

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
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np
import qwix
from flax import traverse_util

from ftjax import inference, lora
from ftjax.compress import derived
from ftjax.inference import Run
from ftjax.lora import QwixModel
from ftjax.models.base import Model
from ftjax.pretrained.load import example_batch

__all__ = [
    "QTYPES",
    "ALL_DENSE",
    "QuantizeError",
    "QuantSpec",
    "QuantizedModel",
    "with_quantization",
    "quantized",
    "dequantized",
    "quantized_kernels",
    "dense_modules",
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
    touched. Without them, the pattern applies to whatever qwix intercepts."""

    weights: str = "int8"
    activations: str | None = None
    pattern: str = ALL_DENSE
    modules: tuple[str, ...] = ()
    embeddings: bool = False  # also the embedding tables, int8 with one scale per row

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

    def provider(self) -> qwix.PtqProvider:
        """qwix's PTQ provider: per-output-channel absmax, on Dense layers' dot_general only."""
        selected = "|".join(re.escape(m) for m in self.modules) if self.modules else self.regex
        rule = qwix.QuantizationRule(
            module_path=selected,
            op_names=("dot_general",),  # not the attention einsums, not convolutions
            weight_qtype=self.weights,
            act_qtype=self.activations,
        )
        return qwix.PtqProvider([rule])

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

    # Embedding tables (`spec.embeddings`): stored `embedding/{qvalue,scale}`, dequantised in
    # the forward (qwix intercepts no lookup); the rest is QwixModel's.
    def init(self, rng, batch):
        params, state = super().init(rng, batch)
        return (_quantize_tables(params) if self.spec.embeddings else params), state

    def module_params(self, params, batch):
        if self.spec.embeddings:
            params = _dequantize_tables(params)
        return super().module_params(params, batch)

    def quantize(self, params, batch):
        params = super().quantize(params, batch)
        return _quantize_tables(params) if self.spec.embeddings else params


def _tables(params: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    return traverse_util.flatten_dict(
        dict(params),
        is_leaf=lambda _, x: not isinstance(x, Mapping) or set(x) == {"qvalue", "scale"},
    )


def _quantize_tables(params: Mapping[str, Any]) -> dict[str, Any]:
    """Every `embedding` (nn.Embed) table as int8 values with a float32 absmax scale per row."""
    flat = _tables(params)
    for k, v in flat.items():
        if k[-1] == "embedding" and not isinstance(v, Mapping):
            q = qwix.quantize(jnp.asarray(v), "int8", channelwise_axes=[0], scale_dtype=jnp.float32)
            flat[k] = {"qvalue": q.qvalue, "scale": q.scale}
    return traverse_util.unflatten_dict(flat)


def _dequantize_tables(params: Mapping[str, Any]) -> dict[str, Any]:
    flat = _tables(params)
    for k, v in flat.items():
        if k[-1] == "embedding" and isinstance(v, Mapping):
            flat[k] = v["qvalue"].astype(jnp.float32) * v["scale"]
    return traverse_util.unflatten_dict(flat)


def with_quantization(model: Model, spec: QuantSpec) -> QuantizedModel:
    """`model` with the Dense layers `spec` selects quantised (a plain model only)."""
    if isinstance(model, QwixModel):
        raise QuantizeError(
            f"cannot quantise a {type(model).__name__}: merge its LoRA adapters first "
            "(ftjax.lora.merge and the LoraModel's base)"
        )
    return QuantizedModel(
        module=qwix.quantize_model(model.module, spec.provider()),
        input_keys=model.input_keys,
        layer_groups=model.layer_groups,
        head_pattern=model.head_pattern,
        cpu_compiler_options=model.cpu_compiler_options,
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
    """`run` with a LoRA run's adapters merged into the plain model."""
    if not run.record.get("lora"):
        return run
    spec = lora.LoraSpec(**run.record["lora"])
    record = {**run.record, "lora": None}
    return dataclasses.replace(
        run, model=run.model.base, params=lora.merge(run.params, spec), record=record
    )


def dense_modules(params: Mapping[str, Any]) -> list[str]:
    """Module paths of the Dense layers in `params`: those with a 2-D `kernel`."""
    flat = traverse_util.flatten_dict(dict(params))
    return sorted("/".join(k[:-1]) for k, v in flat.items() if k[-1] == "kernel" and v.ndim == 2)


def quantized(run: Run, spec: QuantSpec) -> Run:
    """The loaded `run` (LoRA merged) with the Dense kernels `spec` selects quantised; its
    record carries `quantization`, the spec with its `modules`."""
    if run.record.get("quantization"):
        raise QuantizeError(
            f"{run.workdir} is already quantised ({run.record['quantization']}); quantise the "
            "float run it came from (its results.json names it under derived_from)"
        )
    run = _float_run(run)
    dense = dense_modules(run.params)
    modules = tuple(m for m in dense if re.fullmatch(spec.regex, m))
    if not modules:
        raise QuantizeError(
            f"pattern {spec.pattern!r} matches no Dense layer of the model; it must fully match "
            f"module paths such as {dense[:4]} (default {ALL_DENSE!r}: all of them)"
        )
    spec = dataclasses.replace(spec, modules=modules)
    model = with_quantization(run.model, spec)
    params = model.quantize(run.params, example_batch(model, run.preprocessing))
    record = {**run.record, "quantization": spec.to_dict()}
    return dataclasses.replace(run, model=model, params=params, record=record)


def dequantized(run: Run) -> Run:
    """A quantised `run` as the float model with its kernels dequantised (other runs as they
    are): what the PyTorch export formats write. The record stays as it was (it says what the
    weights were), as `ftjax.export.hf.merge_lora` keeps a LoRA run's."""
    if not isinstance(run.model, QuantizedModel):
        return run
    params = lora.dequantize_params(_dequantize_tables(run.params), run.model.spec.weights)
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
) -> dict[str, Any]:
    """Quantises the `checkpoint` of the finished run in `workdir` and writes it as the run
    `out` (see the module docstring); prints one line and returns a summary (paths, spec,
    quantised kernels, sizes in bytes)."""
    spec = QuantSpec(weights, activations, pattern, embeddings=embeddings)
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
        f"quantised {len(kernels)} Dense kernels of {workdir} ({checkpoint}, step {source.step}) "
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
