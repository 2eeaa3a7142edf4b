"""The supported architecture families, by name, and picking one for a checkpoint config.

Each family lives in its own `arch_*.py` module exposing `ARCH: Architecture`; this table lists
them all. A module not present in this checkout (a family still being written) is skipped, so
the others keep working.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ftjax.pretrained.arch import Architecture

# name -> module exposing ARCH; the name must equal ARCH.name.
ARCH_MODULES: dict[str, str] = {
    "bert": "ftjax.pretrained.arch_bert",
    "efficientnet_lite": "ftjax.pretrained.arch_efficientnet",
    "resnet": "ftjax.pretrained.arch_resnet",
    "vit": "ftjax.pretrained.arch_vit",
}


class ArchitectureError(ValueError):
    """An architecture that is unknown, undetectable or wrong for the checkpoint."""


def architectures() -> dict[str, Architecture]:
    """Every importable architecture, by name."""
    found = {}
    for name, module_name in ARCH_MODULES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue
        if module.ARCH.name != name:
            raise ArchitectureError(
                f"{module_name}.ARCH is named {module.ARCH.name!r}, registered as {name!r}"
            )
        found[name] = module.ARCH
    return found


def get(name: str) -> Architecture:
    """The architecture called `name`."""
    known = architectures()
    if name not in known:
        raise ArchitectureError(f"unknown architecture {name!r}; known: {sorted(known)}")
    return known[name]


def detect(config: Mapping[str, Any], where: str) -> Architecture:
    """The one architecture whose `detect` accepts this checkpoint config (`where` names it in errors)."""
    hits = [a for a in architectures().values() if a.detect(config)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise ArchitectureError(
            f"no known architecture recognises the config of {where} (model_type={config.get('model_type')!r}, "
            f"architectures={config.get('architectures')!r}); known: {sorted(architectures())}. Pass arch=NAME "
            "if it is one of them."
        )
    raise ArchitectureError(
        f"the config of {where} fits several architectures {[a.name for a in hits]}; pass arch=NAME"
    )
