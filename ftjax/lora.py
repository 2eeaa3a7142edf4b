"""LoRA adapters on any ftjax model, through qwix, as parameters the group machinery sees.

    spec = LoraSpec(targets="query_value", rank=8, alpha=16.0)
    model = with_lora(model, spec)          # qwix.LoraProvider on the model's Linen module
    params = model.init(rng, batch)[0]      # each targeted Dense gains kernel_lora_a / kernel_lora_b

qwix intercepts the `dot_general` of every Dense whose module path ('/'-joined, e.g.
`encoder/layer_3/attention/self/query`) fully matches `targets`, and adds
`x @ lora_a @ lora_b * alpha / rank` to its output. The adapter params sit beside the kernel
they adapt (`.../query/kernel_lora_a` (in, rank), `.../query/kernel_lora_b` (rank, out)); A is
He-uniform and B zero, so the adapted model starts equal to the base. `LORA_GROUP` is the
parameter group holding them all (`ftjax.param_groups.carve`), which plans train like any other
group; the base kernels stay in their layer groups, so a LoRA phase leaves them frozen: no
gradient, no optimizer state.

Quantised base (QLoRA-style, `base_qtype="int8"`): qwix stores every targeted kernel as int8
with one absmax scale per output channel and computes with it, while the adapters
train in float32. ftjax keeps the params a tree of plain arrays, as everything else here
expects: such a kernel is `.../query/kernel/{qvalue,scale}`, turned into qwix's `QArray` nodes
at apply time. `LoraModel.quantize` converts float params (a pretrained load) to that form.

LoRA dropout (on the adapter's input, as peft's `lora_dropout`) is qwix's and is applied only
in training steps that train some adapter param; in a phase where every adapter is frozen the
model runs without it, so a frozen backbone stays deterministic.

`merge` folds the adapters into the kernels (W + A B alpha / rank): the merged params load into
the model without LoRA and give the same logits.

Not here: which params are in which group (`ftjax.param_groups`), the PEFT-format export
(`ftjax.export.peft_format`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import qwix
from flax import traverse_util

from ftjax.models.base import Batch, Model, Params, carried, flat_paths

__all__ = [
    "TARGETS",
    "LORA_GROUP",
    "LORA_PARAMS",
    "LoraError",
    "BASE_QTYPES",
    "LoraSpec",
    "QwixModel",
    "LoraModel",
    "check_targets",
    "with_lora",
    "lora_paths",
    "merge",
    "base_params",
    "plain_params",
    "dequantize_params",
]

# Named target sets over ftjax's shared transformer layout (ftjax.models.transformer; ViT names
# its attention output `attention/output/dense` too). Anything else is a regex over module paths.
TARGETS = {
    # The LoRA paper's choice (Hu et al. 2021, Section 7.1): W_q and W_v.
    "query_value": r".*/attention/(self|attention)/(query|value)",
    "attention": r".*/attention/((self|attention)/(query|key|value)|output/dense)",
    # Every Dense of the encoder layers (QLoRA's "all linear layers"), not the head or pooler.
    "all_linear": r"encoder/.*",
}
LORA_GROUP = "lora"
LORA_PARAMS = r".*_lora_[ab]"  # full-match regex of adapter param paths
# '': float base. Not nf4: jax 0.10's CPU executables reject 4-bit arrays passed in from outside
# ("input layouts that disagree", sub_byte_element_size 0 vs 4), so a 4-bit base cannot be a
# train-step argument there.
BASE_QTYPES = ("", "int8")
_SUFFIXES = ("_lora_a", "_lora_b")


class LoraError(ValueError):
    """A LoRA setting cannot apply to the model; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """LoRA settings: `targets` (a TARGETS name or a regex fully matching module paths), `rank`,
    `alpha` (the update is scaled by alpha / rank), `dropout` on the adapter input and
    `base_qtype`, the storage of the targeted base kernels ('' float32, 'int8')."""

    targets: str
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    base_qtype: str = ""

    def __post_init__(self):
        if self.rank < 1:
            raise LoraError(f"lora rank is {self.rank}; it must be >= 1 (typically 4-64)")
        if not self.alpha > 0:
            raise LoraError(f"lora alpha is {self.alpha}; it must be > 0 (often 2 x rank)")
        if not 0.0 <= self.dropout < 1.0:
            raise LoraError(f"lora dropout is {self.dropout}; it must be in [0, 1)")
        if self.base_qtype not in BASE_QTYPES:
            raise LoraError(
                f"lora base_qtype is {self.base_qtype!r}; use one of {list(BASE_QTYPES)} "
                "('' keeps the base in float32)"
            )
        try:
            re.compile(self.regex)
        except re.error as e:
            raise LoraError(
                f"lora targets {self.targets!r} is neither one of {sorted(TARGETS)} nor a valid "
                f"regex ({e})"
            ) from None

    @property
    def regex(self) -> str:
        return TARGETS.get(self.targets, self.targets)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def provider(self, *, dropout: bool) -> qwix.LoraProvider:
        return qwix.LoraProvider(
            module_path=self.regex,
            rank=self.rank,
            alpha=self.alpha,
            dropout=self.dropout if dropout else 0.0,
            weight_qtype=self.base_qtype or None,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class QwixModel(Model):
    """A Model whose module runs through qwix and may store kernels quantised, while its params
    stay a tree of plain arrays: a quantised kernel is `.../kernel/{qvalue,scale}`, turned into
    qwix's `QArray` nodes at apply time (`LoraModel` on an int8 base,
    `ftjax.compress.quantize.QuantizedModel`)."""

    error: ClassVar[type[ValueError]] = ValueError  # raised for params of the wrong form
    hint: ClassVar[str] = "make them with quantize"  # how to get params of the right form
    # The module's own params tree (qwix nodes), found once per model: shapes only.
    _qwix_shapes: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def quantized(self) -> bool:
        """Whether the module stores some kernels quantised."""
        return True

    def init(self, rng: jax.Array, batch: Batch):
        params, state = super().init(rng, batch)
        return (plain_params(params) if self.quantized else params), state

    def module_params(self, params: Params, batch: Batch) -> Any:
        if not self.quantized:
            return params
        shapes = self._module_shapes(batch)
        order = [_plain_key(path) for path, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]]
        flat = traverse_util.flatten_dict(dict(params))
        missing = [k for k in order if k not in flat]
        if missing:
            raise self.error(
                f"params lack {['/'.join(k) for k in missing[:4]]}: they are not the quantised "
                f"form of this model ({self.hint})"
            )
        return jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(shapes), [flat[k] for k in order]
        )

    def quantize(self, params: Params, batch: Batch) -> Params:
        """Float params (of the module's layout) -> this model's, the selected kernels quantised."""
        params = jax.tree.map(jnp.asarray, dict(params))  # qwix wants jax arrays
        return plain_params(qwix.quantize_params(params, self._module_shapes(batch)))

    def _module_shapes(self, batch: Batch) -> Any:
        if "params" not in self._qwix_shapes:
            init = lambda: self.module.init(jax.random.key(0), *self._inputs(batch), train=False)
            self._qwix_shapes["params"] = jax.eval_shape(init)["params"]
        return self._qwix_shapes["params"]


@dataclasses.dataclass(frozen=True)
class LoraModel(QwixModel):
    """A Model whose module carries qwix LoRA; `train_module` is the same with LoRA dropout."""

    error: ClassVar[type[ValueError]] = LoraError
    hint: ClassVar[str] = "load them through load_pretrained or LoraModel.quantize"
    spec: LoraSpec | None = None
    train_module: nn.Module | None = None
    base: Model | None = None  # the model without adapters (what `merge`d params load into)

    @property
    def quantized(self) -> bool:
        return bool(self.spec.base_qtype)

    def module_for(self, train: bool, frozen: frozenset[str], params: Params) -> nn.Module:
        if not (train and self.spec.dropout > 0):
            return self.module
        trains_adapter = any(p not in frozen for p in lora_paths(params))
        return self.train_module if trains_adapter else self.module


def with_lora(model: Model, spec: LoraSpec) -> LoraModel:
    """`model` with LoRA adapters on the Dense layers `spec.targets` selects."""
    wrap = lambda dropout: qwix.apply_lora_to_model(model.module, spec.provider(dropout=dropout))
    return LoraModel(
        module=wrap(False),
        **carried(model),
        spec=spec,
        train_module=wrap(True),
        base=model,
    )


def _plain_key(path) -> tuple[str, ...]:
    """A qwix tree path -> the plain-dict key: `kernel`'s `.array.qvalue` -> `kernel/qvalue`."""
    keys = []
    for p in path:
        if isinstance(p, jax.tree_util.DictKey):
            keys.append(str(p.key))
        elif isinstance(p, jax.tree_util.GetAttrKey) and p.name != "array":
            keys.append(p.name)
    return tuple(keys)


def plain_params(tree: Any) -> Params:
    """qwix's params (quantised kernels as QArray nodes) as a nested dict of arrays."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return traverse_util.unflatten_dict({_plain_key(p): x for p, x in leaves})


def _dequantize(kernel: Any, qtype: str) -> jax.Array:
    if not isinstance(kernel, Mapping):
        return kernel
    return qwix.dequantize(qwix.QArray(kernel["qvalue"], kernel["scale"], None, qtype))


def dequantize_params(params: Mapping[str, Any], qtype: str) -> Params:
    """`params` with every quantised kernel (`kernel/{qvalue,scale}`) back as a float32 array."""
    tree = {k: _dequantize(v, qtype) for k, v in _unflat_kernels(params).items()}
    return traverse_util.unflatten_dict(tree)


def lora_paths(params: Mapping[str, Any]) -> list[str]:
    """'/'-joined paths of the adapter params in `params`."""
    return [p for p in flat_paths(params) if re.fullmatch(LORA_PARAMS, p)]


def check_targets(params: Mapping[str, Any], spec: LoraSpec) -> None:
    """LoraError unless `spec.targets` put an adapter on at least one Dense of the model."""
    if lora_paths(params):
        return
    dense = sorted({p.rsplit("/", 1)[0] for p in flat_paths(params) if p.endswith("/kernel")})
    raise LoraError(
        f"lora targets {spec.targets!r} (regex {spec.regex!r}) match no Dense layer of the model; "
        f"it must fully match module paths such as {dense[:4]}, or be one of {sorted(TARGETS)}"
    )


def merge(params: Mapping[str, Any], spec: LoraSpec) -> Params:
    """`params` with every adapter folded into its kernel (W + A B alpha / rank; a quantised
    kernel is dequantised first), adapters removed: the float params of the model without LoRA,
    computing the same function."""
    tree = _unflat_kernels(params)
    out = {k: v for k, v in tree.items() if not k[-1].endswith(_SUFFIXES)}
    for key, a in tree.items():
        if not key[-1].endswith("_lora_a"):
            continue
        name = key[-1][: -len("_lora_a")]
        kernel_key = (*key[:-1], name)
        b = tree[(*key[:-1], name + "_lora_b")]
        kernel = _dequantize(tree[kernel_key], spec.base_qtype)
        delta = jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32)) * spec.scale
        out[kernel_key] = (kernel + delta.reshape(kernel.shape)).astype(jnp.float32)
    return traverse_util.unflatten_dict(out)


def _unflat_kernels(params: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    """Flat params whose quantised kernels stay one {qvalue, scale} entry each."""
    is_leaf = lambda _, x: not isinstance(x, Mapping) or set(x) == {"qvalue", "scale"}
    return traverse_util.flatten_dict(dict(params), is_leaf=is_leaf)


def base_params(params: Mapping[str, Any]) -> Params:
    """`params` without the adapters (the base model's params, unmerged)."""
    flat = traverse_util.flatten_dict(dict(params))
    return traverse_util.unflatten_dict(
        {k: v for k, v in flat.items() if not k[-1].endswith(_SUFFIXES)}
    )
