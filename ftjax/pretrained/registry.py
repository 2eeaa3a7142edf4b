"""The supported architecture families, by name, and picking one for a checkpoint config.

Each family lives in its own `ftjax/pretrained/arch_<name>.py` module exposing
`ARCH: Architecture` (and its Flax model in `ftjax/models/<name>.py`); this module finds them by
listing the package, so adding an architecture edits no central list. Modules are imported in
file-name order, so `architectures()` and error messages list families deterministically.

Not for: building models or reading weights (`ftjax.pretrained.load`), key matching (`merge`).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

import ftjax.pretrained as _package
from ftjax.pretrained.arch import Architecture

__all__ = ["ArchitectureError", "arch_modules", "architectures", "get", "detect"]

_PREFIX = "arch_"


class ArchitectureError(ValueError):
    """An architecture that is unknown, undetectable or wrong for the checkpoint."""


def arch_modules() -> tuple[str, ...]:
    """Names of the `ftjax.pretrained.arch_*` modules, sorted."""
    names = (m.name for m in pkgutil.iter_modules(_package.__path__))
    return tuple(
        f"{_package.__name__}.{name}" for name in sorted(names) if name.startswith(_PREFIX)
    )


def architectures() -> dict[str, Architecture]:
    """Every architecture module's ARCH, by name, in module-name order.

    A module `arch_<x>.py` that defines no `ARCH` (a helper) is skipped. `ARCH.name` must be `x`
    or start with `x_` (`arch_efficientnet.py` holds "efficientnet_lite"); a name that does not
    fit its module, two modules claiming one name, or an ARCH that is not an `Architecture` is an
    error naming the module.
    """
    return dict(_discover())


@functools.cache
def _discover() -> dict[str, Architecture]:
    found: dict[str, Architecture] = {}
    where: dict[str, str] = {}
    for module_name in arch_modules():
        module = importlib.import_module(module_name)
        arch = getattr(module, "ARCH", None)
        if arch is None:
            continue
        if not isinstance(arch, Architecture):
            raise ArchitectureError(
                f"{module_name}.ARCH is a {type(arch).__name__}, not an "
                "ftjax.pretrained.arch.Architecture"
            )
        stem = module_name.rsplit(".", 1)[1].removeprefix(_PREFIX)
        if arch.name != stem and not arch.name.startswith(stem + "_"):
            raise ArchitectureError(
                f"{module_name}.ARCH is named {arch.name!r}, which does not fit its module: name it "
                f"{stem!r} (or {stem + '_...'!r}), or rename the module {_PREFIX}{arch.name}.py"
            )
        if arch.name in found:
            raise ArchitectureError(
                f"{module_name}.ARCH is named {arch.name!r}, as {where[arch.name]}.ARCH is; "
                "give each architecture its own name"
            )
        found[arch.name] = arch
        where[arch.name] = module_name
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
