"""Structured pruning of a BERT-layout encoder: fewer FFN neurons and attention heads, as a
genuinely smaller dense model (sliced kernels and biases plus the config that builds it).

Importance is magnitude: an FFN neuron's is the norm (`norm=2`: L2, `norm=1`: L1) of its
weights, its `intermediate/dense` kernel column and its `output/dense` kernel row together; a
head's is the norm of its query, key and value kernel columns and its `attention/output/dense`
kernel rows together (biases are not scored). Every layer keeps the same number of neurons and
heads, its highest-scoring ones in their original order (ties: the lower index), so one config
describes the model: `intermediate_size` shrinks; with heads pruned, `num_attention_heads`
shrinks and `attention_head_size` keeps the head size (read by `ftjax.models.bert.BertConfig`).

Exactness: slicing out a neuron or head removes exactly its contribution, so a neuron or head
whose weights are zero contributes nothing before or after (tests/test_structured.py).

Layout: `encoder/layer_<i>/{attention/self/{query,key,value}, attention/output/dense,
intermediate/dense, output/dense}` with plain kernel/bias params (merge LoRA adapters first).
Configs use Hugging Face BERT names (BERT, RoBERTa, ELECTRA); head pruning builds with the
`bert` architecture only, and transformers cannot hold a head-pruned model (its attention
derives the head size as hidden_size / num_attention_heads), so `--format=hf` refuses it:
export with `--format=flax`. An FFN-pruned model exports to hf as usual.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ftjax.pretrained import registry
from ftjax.pretrained.arch import ModelOptions

__all__ = [
    "StructuredPruneError",
    "prune_structured",
    "prune_run",
    "ffn_importance",
    "head_importance",
]

_QKV = ("query", "key", "value")


class StructuredPruneError(ValueError):
    """The params or the keep counts do not fit structured pruning; the message says why."""


def _layers(params: Mapping[str, Any]) -> list[str]:
    names = [k for k in params.get("encoder", {}) if re.fullmatch(r"layer_\d+", k)]
    if not names:
        raise StructuredPruneError(
            "no encoder/layer_<i> params: structured pruning reads the BERT layout "
            "(encoder/layer_<i>/attention/self/query/kernel, ...)"
        )
    return sorted(names, key=lambda n: int(n.split("_")[1]))


def _dense(layer: Mapping[str, Any], path: str) -> dict[str, np.ndarray]:
    node = layer
    for key in path.split("/"):
        node = node[key]
    if set(node) != {"kernel", "bias"}:
        raise StructuredPruneError(
            f"{path} holds {sorted(node)}; structured pruning slices plain kernel/bias Dense "
            "layers (merge LoRA adapters first: ftjax.lora.merge)"
        )
    return {k: np.asarray(v) for k, v in node.items()}


def _norm(x: np.ndarray, axis: int, norm: int) -> np.ndarray:
    x = np.abs(x.astype(np.float64))
    return x.sum(axis) if norm == 1 else (x**2).sum(axis)


def ffn_importance(layer: Mapping[str, Any], norm: int = 2) -> np.ndarray:
    """(intermediate_size,) scores of one layer's FFN neurons (see module doc)."""
    w_in = _dense(layer, "intermediate/dense")["kernel"]  # (hidden, intermediate)
    w_out = _dense(layer, "output/dense")["kernel"]  # (intermediate, hidden)
    total = _norm(w_in, 0, norm) + _norm(w_out, 1, norm)
    return total if norm == 1 else np.sqrt(total)


def head_importance(layer: Mapping[str, Any], heads: int, norm: int = 2) -> np.ndarray:
    """(heads,) scores of one layer's attention heads (see module doc)."""
    total = 0.0
    for name in _QKV:
        w = _dense(layer, f"attention/self/{name}")["kernel"]  # (hidden, heads * head_size)
        total = total + _norm(w.reshape(w.shape[0], heads, -1), (0, 2), norm)
    w_o = _dense(layer, "attention/output/dense")["kernel"]  # (heads * head_size, hidden)
    total = total + _norm(w_o.reshape(heads, -1, w_o.shape[1]), (1, 2), norm)
    return total if norm == 1 else np.sqrt(total)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def _count(keep: Any, total: int, what: str, fraction: bool = True) -> int:
    """How many of `total` to keep: `keep` itself (an int) or round(keep * total) (a float)."""
    kinds = (int, float) if fraction else (int,)
    want = "a fraction in (0, 1] or a count" if fraction else "a count"
    if isinstance(keep, bool) or not isinstance(keep, kinds):
        raise StructuredPruneError(f"{what}={keep!r}; give {want}")
    n = keep if isinstance(keep, int) else round(keep * total)
    if (isinstance(keep, float) and not 0 < keep <= 1) or not 1 <= n <= total:
        raise StructuredPruneError(
            f"{what}={keep!r} keeps {n} of {total}; give {want} in [1, {total}]"
        )
    return n


def _slice_layer(layer: dict, neurons: np.ndarray, cols: np.ndarray | None) -> dict:
    """A copy of one layer's params keeping FFN `neurons` and the q/k/v output columns `cols`."""
    out = _copy(layer)
    w_in, w_out = _dense(layer, "intermediate/dense"), _dense(layer, "output/dense")
    out["intermediate"]["dense"] = {
        "kernel": w_in["kernel"][:, neurons],
        "bias": w_in["bias"][neurons],
    }
    out["output"]["dense"]["kernel"] = w_out["kernel"][neurons, :]
    if cols is not None:
        for name in _QKV:
            d = _dense(layer, f"attention/self/{name}")
            out["attention"]["self"][name] = {
                "kernel": d["kernel"][:, cols],
                "bias": d["bias"][cols],
            }
        o = _dense(layer, "attention/output/dense")
        out["attention"]["output"]["dense"]["kernel"] = o["kernel"][cols, :]
    return out


def _copy(tree: Any) -> Any:
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, Mapping) else np.asarray(tree)


def prune_structured(
    params: Mapping[str, Any],
    checkpoint_config: Mapping[str, Any],
    *,
    ffn_keep: float | int = 1.0,
    heads_keep: int | None = None,
    norm: int = 2,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, checkpoint config) of the model keeping, in every layer, the `ffn_keep` FFN
    neurons (a fraction of intermediate_size, or a count) and `heads_keep` attention heads
    (None: all) of highest importance. Arrays come back as numpy."""
    if norm not in (1, 2):
        raise StructuredPruneError(f"norm={norm!r}; use 1 (L1) or 2 (L2)")
    config = dict(checkpoint_config)
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    head_size = config.get("attention_head_size") or hidden // heads
    n_ffn = _count(ffn_keep, config["intermediate_size"], "ffn_keep")
    n_heads = (
        heads if heads_keep is None else _count(heads_keep, heads, "heads_keep", fraction=False)
    )
    out = _copy(params)
    for name in _layers(params):
        layer = params["encoder"][name]
        neurons = _top(ffn_importance(layer, norm), n_ffn)
        cols = None
        if n_heads < heads:
            kept = _top(head_importance(layer, heads, norm), n_heads)
            cols = (kept[:, None] * head_size + np.arange(head_size)).ravel()
        out["encoder"][name] = _slice_layer(out["encoder"][name], neurons, cols)
    config["intermediate_size"] = n_ffn
    if n_heads < heads:
        config.update(num_attention_heads=n_heads, attention_head_size=head_size)
    return out, config


def prune_run(
    run: Any, *, ffn_keep: float | int = 1.0, heads_keep: int | None = None, norm: int = 2
):
    """`run` (`ftjax.inference.Run`, e.g. from `load_run`) pruned by `prune_structured`: the
    smaller model built from the new config, its params and a record holding that config, ready
    for `ftjax.export.export_run`."""
    if run.record.get("lora") or run.record.get("quantization"):
        raise StructuredPruneError(
            "structured pruning slices float kernels: merge the LoRA adapters / dequantise first "
            "(ftjax.export.hf.float_run)"
        )
    if heads_keep is not None and run.arch != "bert":
        raise StructuredPruneError(
            f"head pruning builds with the bert architecture only (attention_head_size); "
            f"{run.arch} supports ffn_keep"
        )
    params, config = prune_structured(
        run.params,
        run.record["checkpoint_config"],
        ffn_keep=ffn_keep,
        heads_keep=heads_keep,
        norm=norm,
    )
    record = {**run.record, "checkpoint_config": config}
    model = registry.get(run.arch).build(config, ModelOptions(**record["options"]))
    return dataclasses.replace(run, model=model, params=params, record=record)
