"""Offline TFDS builders and their atomic preparation into a data_dir.

`prepare(name, data_dir)` builds `rotten_tomatoes` or `fashion_mnist` (array_record) into a
temporary folder beside `data_dir` and moves the finished version folder into place, so a failure
leaves `data_dir` exactly as it was. `load_builder(name, data_dir)` returns the prepared builder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import tensorflow_datasets as tfds

from ftjax.data.builders import fashion_mnist, rotten_tomatoes

__all__ = ["OFFLINE_BUILDERS", "is_prepared", "prepare", "load_builder"]

OFFLINE_BUILDERS = {
    "rotten_tomatoes": rotten_tomatoes.RottenTomatoes,
    "fashion_mnist": fashion_mnist.FashionMnist,
}
_ASSET_CHECKS = {
    "rotten_tomatoes": rotten_tomatoes.source_file,
    "fashion_mnist": fashion_mnist.source_files,
}


def _version_dir(name: str, data_dir: str | os.PathLike) -> Path:
    cls = OFFLINE_BUILDERS[name]
    return Path(data_dir) / cls.name / str(cls.VERSION)


def is_prepared(name: str, data_dir: str | os.PathLike) -> bool:
    return (_version_dir(name, data_dir) / "dataset_info.json").is_file()


def prepare(name: str, data_dir: str | os.PathLike) -> Path:
    """Prepare the offline dataset `name` into `data_dir` (no-op if already there); return its folder."""
    if name not in OFFLINE_BUILDERS:
        raise ValueError(
            f"no offline builder named {name!r}; offline builders: {sorted(OFFLINE_BUILDERS)}"
        )
    final = _version_dir(name, data_dir)
    if is_prepared(name, data_dir):
        return final
    _ASSET_CHECKS[name]()  # Fail on a missing asset before anything is created.
    parent = Path(data_dir).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".ftjax-prepare-{name}-", dir=parent))
    try:
        print(f"{name}: preparing into {final} (staging in {tmp})", flush=True)
        builder = OFFLINE_BUILDERS[name](data_dir=str(tmp), file_format="array_record")
        builder.download_and_prepare()
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / builder.name / str(builder.VERSION), final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{name}: ready in {final}", flush=True)
    return final


def load_builder(name: str, data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
    """The prepared builder, preparing it first if needed."""
    prepare(name, data_dir)
    return OFFLINE_BUILDERS[name](data_dir=str(data_dir), file_format="array_record")
