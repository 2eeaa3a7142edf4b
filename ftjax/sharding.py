"""Device mesh, parameter partition rules and batch sharding.

One `jax.sharding.Mesh` with named axes `data` and `fsdp`. Parameters are placed by partition
rules, (regex, PartitionSpec) pairs whose regex fully matches the '/'-joined param path, first
match wins; a parameter no rule names is sharded over `fsdp` along its largest dimension that
divides evenly (when the fsdp axis has more than one device) and replicated otherwise. Optimizer
state leaves that mirror a parameter (Adam moments, momentum) take that parameter's spec, so
the state can be created directly on the mesh (`jax.jit(tx.init, out_shardings=...)`). The
batch is sharded over both axes: fsdp is data parallel too, it only shards the state.

Not here: what a step computes (`ftjax.steps`), multi-host data reading (`ftjax.data`), starting
the multi-process runtime (`ftjax.distributed`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "AXES",
    "Rules",
    "ShardingError",
    "MeshConfig",
    "make_mesh",
    "replicated",
    "batch_sharding",
    "param_specs",
    "shardings_like",
    "shard_batch",
]

AXES = ("data", "fsdp")
Rules = Sequence[tuple[str, PartitionSpec]]


class ShardingError(ValueError):
    """A mesh or partition rule does not fit the devices or the parameters."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; `data=-1` takes every device the fsdp axis leaves over."""

    data: int = -1
    fsdp: int = 1
    fsdp_min_size: int = 2**12  # params smaller than this stay replicated under fsdp


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp') mesh over `devices` (default: all devices)."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if cfg.fsdp < 1 or n % cfg.fsdp:
        raise ShardingError(f"mesh fsdp={cfg.fsdp} must be >= 1 and divide the {n} devices")
    data = n // cfg.fsdp if cfg.data == -1 else cfg.data
    if data * cfg.fsdp != n:
        raise ShardingError(
            f"mesh data={cfg.data} x fsdp={cfg.fsdp} = {data * cfg.fsdp} devices, but there are {n}; "
            "set data=-1 to use the rest"
        )
    return Mesh(np.asarray(devices).reshape(data, cfg.fsdp), AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every mesh axis."""
    return NamedSharding(mesh, PartitionSpec(AXES))


def param_specs(
    params: Mapping[str, Any], mesh: Mesh, rules: Rules = (), fsdp_min_size: int = 2**12
) -> Any:
    """A PartitionSpec per parameter from `rules`, else automatic fsdp sharding (see module doc)."""
    compiled = [
        (re.compile(rx), spec if isinstance(spec, PartitionSpec) else PartitionSpec(*spec))
        for rx, spec in rules
    ]
    flat = traverse_util.flatten_dict(dict(params))
    specs = {}
    for key, x in flat.items():
        path = "/".join(key)
        spec = next((s for rx, s in compiled if rx.fullmatch(path)), None)
        if spec is None:
            spec = _auto_fsdp_spec(np.shape(x), mesh.shape["fsdp"], fsdp_min_size)
        _check_spec(path, np.shape(x), spec, mesh)
        specs[key] = spec
    return traverse_util.unflatten_dict(specs)


def _auto_fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> PartitionSpec:
    if fsdp == 1 or int(np.prod(shape)) < min_size:
        return PartitionSpec()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
        if shape[d] % fsdp == 0:
            return PartitionSpec(*[("fsdp" if i == d else None) for i in range(len(shape))])
    return PartitionSpec()


def _check_spec(path: str, shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh) -> None:
    if len(spec) > len(shape):
        raise ShardingError(
            f"partition rule for {path!r} gives {spec} ({len(spec)} dims) to a {len(shape)}-dim parameter {shape}"
        )
    for dim, axes in zip(shape, spec):
        names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        unknown = [a for a in names if a not in mesh.shape]
        if unknown:
            raise ShardingError(
                f"partition rule for {path!r} names mesh axes {unknown}; the mesh axes are {list(mesh.shape)}"
            )
        size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        if dim % size:
            raise ShardingError(
                f"partition rule for {path!r}: dimension {dim} of {shape} does not divide over {names} ({size} devices)"
            )


def shardings_like(tree: Any, specs: Any, mesh: Mesh) -> Any:
    """NamedShardings for `tree` (e.g. optimizer state shapes): a leaf whose key path ends in a
    param path and has that param's shape gets the param's spec; any other leaf is replicated."""
    flat_specs = traverse_util.flatten_dict(dict(specs)) if specs else {}

    def sharding(path, leaf):
        keys = _trailing_dict_keys(path)
        for i in range(len(keys)):
            spec = flat_specs.get(keys[i:])
            if spec is not None:
                return NamedSharding(mesh, spec)
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(sharding, tree)


def _trailing_dict_keys(path) -> tuple[str, ...]:
    keys: list[str] = []
    for k in reversed(path):
        if not isinstance(k, jax.tree_util.DictKey):
            break
        keys.append(str(k.key))
    return tuple(reversed(keys))


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Place this process's batch on the mesh, split over the batch dimension."""
    sharding = batch_sharding(mesh)
    n = int(np.prod(list(mesh.shape.values())))
    out = {}
    for k, x in batch.items():
        if isinstance(x, jax.Array) and x.sharding == sharding:
            out[k] = x
            continue
        x = np.asarray(x)
        if x.shape[0] * jax.process_count() % n:
            raise ShardingError(
                f"batch key {k!r} has {x.shape[0]} rows, which do not split over {n} devices; "
                "use a global batch size divisible by the device count"
            )
        out[k] = jax.make_array_from_process_local_data(sharding, x)
    return out
