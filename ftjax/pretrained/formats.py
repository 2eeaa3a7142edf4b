"""Read checkpoint files into `{key: numpy array}` without importing torch.

Formats: safetensors (through `safetensors.numpy`), PyTorch zip pickles (`torch.save` since 1.6)
and old-style non-zip pickles (`_use_new_zipfile_serialization=False`). Pickles go through a
restricted unpickler that resolves only the handful of torch names a tensor state dict needs
(tensor/parameter rebuild functions, storage types, OrderedDict) to local stand-ins; any other
global is refused, so reading a checkpoint never runs code from it. Every tensor's storage offset,
size and stride are checked to stay inside its storage before a byte is read, so a crafted file
cannot make the reader copy memory from outside it.

Not for: choosing which file in a folder to read (sources.py) or mapping keys (merge.py).
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "Arrays",
    "SAFETENSORS_SUFFIXES",
    "PICKLE_SUFFIXES",
    "CheckpointFormatError",
    "read_arrays",
    "read_safetensors_index",
]

Arrays = dict[str, np.ndarray]

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage class names -> numpy dtypes (the only storage types a checkpoint may name).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class CheckpointFormatError(ValueError):
    """A checkpoint file that cannot be read: corrupt, truncated, unsupported or unsafe."""


def read_arrays(path: str | Path) -> Arrays:
    """All tensors of one checkpoint file as numpy arrays, keyed by their checkpoint names."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"checkpoint file {path} does not exist")
    try:
        if path.suffix in SAFETENSORS_SUFFIXES:
            return _read_safetensors(path)
        if zipfile.is_zipfile(path):
            return _read_torch_zip(path)
        return _read_torch_legacy(path)
    except CheckpointFormatError as e:
        if str(path) in str(e):
            raise
        raise CheckpointFormatError(f"checkpoint {path}: {e}") from e
    except Exception as e:  # noqa: BLE001 - every reader failure becomes one message naming the file
        raise CheckpointFormatError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {e}. The file is corrupt or truncated "
            "(re-download or re-save it), or not a safetensors / torch.save file."
        ) from e


def read_safetensors_index(path: Path) -> list[Path]:
    """Shard files named by a `model.safetensors.index.json`, in a stable order."""
    weight_map = json.loads(path.read_text())["weight_map"]
    return [path.parent / name for name in sorted(set(weight_map.values()))]


def _read_safetensors(path: Path) -> Arrays:
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))


# ----------------------------------------------------------------------------- torch pickles


class _Storage:
    """A torch storage as a flat numpy array; `data` is filled when its bytes are read."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _StorageType:
    """Stand-in for `torch.FloatStorage` & co: only carries the element dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _TensorType:
    """Stand-in for `torch.Tensor` / `torch.nn.Parameter` as named by `_rebuild_from_type_v2`."""


class _LazyTensor:
    """A tensor whose storage bytes may arrive after unpickling (legacy format).

    The pickle states the tensor's storage offset, size and stride; `materialise` checks that
    they stay inside the storage before it reads a byte, since a crafted file may state anything.
    """

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def materialise(self, key: str) -> np.ndarray:
        """The tensor as a new numpy array; `key` names it in errors."""
        if not isinstance(self.storage, _Storage):
            raise CheckpointFormatError(
                f"tensor {key!r} is rebuilt from a {type(self.storage).__name__}, not a storage"
            )
        flat = self.storage.data
        if flat is None:
            raise CheckpointFormatError(f"the storage bytes of tensor {key!r} are missing")
        offset, size, stride = _checked_layout(key, self.offset, self.size, self.stride, flat.size)
        if not size:
            return flat[offset].copy()
        if 0 in size:
            return np.empty(size, flat.dtype)  # nothing to read; torch allows any offset here
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=tuple(s * flat.itemsize for s in stride)
        )
        return np.array(view)


def _checked_layout(
    key: str, offset: Any, size: Any, stride: Any, storage_numel: int
) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(offset, size, stride) of a tensor whose every element lies inside its storage, or raise.

    torch writes only non-negative offsets, sizes and strides (it has no negative strides), so
    anything else, or a last element past the storage's end, comes from a corrupt or crafted file.
    """
    layout = f"storage offset {offset!r}, size {size!r}, stride {stride!r}"
    refuse = "The file is corrupt or crafted; refusing to read it (re-download or re-save it)."
    ints = lambda v: isinstance(v, (tuple, list)) and all(type(n) is int for n in v)
    if type(offset) is not int or not ints(size) or not ints(stride) or len(size) != len(stride):
        raise CheckpointFormatError(
            f"tensor {key!r} has a malformed layout: {layout} (need an int offset and equally "
            f"long int tuples). {refuse}"
        )
    negative = [
        name
        for name, bad in (
            ("storage offset", offset < 0),
            ("size", min(size, default=0) < 0),
            ("stride", min(stride, default=0) < 0),
        )
        if bad
    ]
    if negative:
        raise CheckpointFormatError(
            f"tensor {key!r} has a negative {' and '.join(negative)} ({layout}); torch never "
            f"writes these. {refuse}"
        )
    size, stride = tuple(size), tuple(stride)
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage_numel:
            raise CheckpointFormatError(
                f"tensor {key!r} reaches outside its storage: {layout} span elements "
                f"{offset}..{last}, but its storage holds {storage_numel} elements. {refuse}"
            )
    return offset, size, stride


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused) -> _LazyTensor:
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_unused):
    return data


def _rebuild_from_type(func, _new_type, args, _state):
    return func(*args)


def _ordered_dict(*args):
    return collections.OrderedDict(*args)


def _codecs_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles spell bytes objects as _codecs.encode(str, "latin1").
    return text.encode(encoding)


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type | _StorageType] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Tensor"): _TensorType,
    ("torch.nn.parameter", "Parameter"): _TensorType,
    ("_codecs", "encode"): _codecs_encode,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `_ALLOWED` globals and torch storage references."""

    def __init__(self, file, load_storage: Callable[[_StorageType, str, int], _Storage]):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointFormatError(
                f"the pickle asks for {module}.{name}, which a tensor state dict never needs; refusing "
                "to run it. Only plain state dicts of tensors are read (re-save with "
                "torch.save(model.state_dict(), ...) or convert to safetensors)."
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and _text(pid[0]) == "storage"):
            raise CheckpointFormatError(f"unsupported persistent id {pid!r} in pickle")
        storage_type, key, _location, numel = pid[1], _text(pid[2]), pid[3], pid[4]
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointFormatError(
                "storage views of the pre-1.0 torch format are not supported"
            )
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"unsupported storage type {storage_type!r}")
        if type(numel) is not int or numel < 0:
            raise CheckpointFormatError(
                f"storage {key} has {numel!r} elements; the file is corrupt or crafted"
            )
        return self._load_storage(storage_type, key, numel)


def _text(x: str | bytes) -> str:
    return x.decode("ascii") if isinstance(x, bytes) else x


def _state_dict(obj: Any) -> Arrays:
    """The `{name: array}` of an unpickled object: a state dict, possibly under "state_dict"/"model"."""
    if isinstance(obj, dict) and not any(isinstance(v, _LazyTensor) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                return _state_dict(obj[key])
    if not isinstance(obj, dict):
        raise CheckpointFormatError(
            f"the pickle holds a {type(obj).__name__}, not a state dict of tensors"
        )
    arrays, skipped = {}, []
    for name, value in obj.items():
        if isinstance(value, _LazyTensor):
            arrays[str(name)] = value.materialise(str(name))
        else:
            skipped.append(name)
    if not arrays:
        raise CheckpointFormatError(f"the pickle's dict holds no tensors (keys: {list(obj)[:10]})")
    return arrays


def _read_torch_zip(path: Path) -> Arrays:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointFormatError(
                f"{path} is a zip file but not a torch.save archive (no single data.pkl)"
            )
        root = pickles[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}

        def load_storage(storage_type: _StorageType, key: str, numel: int) -> _Storage:
            if key not in storages:
                storage = _Storage(storage_type.dtype, numel)
                raw = archive.read(f"{root}data/{key}")
                if len(raw) < numel * storage.dtype.itemsize:
                    raise CheckpointFormatError(
                        f"storage {key} holds {len(raw)} bytes, expected {numel * storage.dtype.itemsize}"
                    )
                storage.data = np.frombuffer(raw, dtype=storage.dtype, count=numel)
                storages[key] = storage
            return storages[key]

        obj = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), load_storage).load()
        return _state_dict(obj)


def _read_torch_legacy(path: Path) -> Arrays:
    """The pre-1.6 layout: magic, protocol, sys info, the object pickle, storage keys, raw storages."""
    with open(path, "rb") as f:
        if _safe_load(f) != _LEGACY_MAGIC:
            raise CheckpointFormatError(
                f"{path} is neither safetensors, a torch zip archive nor a legacy torch pickle"
            )
        if (version := _safe_load(f)) != _LEGACY_PROTOCOL:
            raise CheckpointFormatError(f"{path}: unsupported legacy torch protocol {version}")
        sys_info = _safe_load(f)
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise CheckpointFormatError(f"{path} was saved big-endian, which is not supported")
        storages: dict[str, _Storage] = {}

        def load_storage(storage_type: _StorageType, key: str, numel: int) -> _Storage:
            return storages.setdefault(key, _Storage(storage_type.dtype, numel))

        obj = _RestrictedUnpickler(f, load_storage).load()
        keys = _safe_load(f)
        for key in keys:
            storage = storages[_text(key)]
            header = f.read(8)
            if len(header) < 8:
                raise CheckpointFormatError(f"{path} is truncated: storage {key} is missing")
            (numel,) = struct.unpack("<q", header)
            raw = f.read(numel * storage.dtype.itemsize)
            if numel != storage.numel or len(raw) < numel * storage.dtype.itemsize:
                raise CheckpointFormatError(f"{path} is truncated or corrupt at storage {key}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype, count=numel)
        return _state_dict(obj)


def _safe_load(f) -> Any:
    return _RestrictedUnpickler(f, _no_storage).load()


def _no_storage(*_args) -> _Storage:
    raise CheckpointFormatError("unexpected storage reference in a legacy checkpoint header")
