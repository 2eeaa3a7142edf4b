"""ftjax: transfer learning and fine-tuning in JAX/Flax.

`ftjax.load_finetuned(path)` loads a finished run's workdir or a `--format=flax` export for
prediction from Python (`ftjax.finetuned`); it is imported on first use, so `import ftjax` stays
light (no JAX).
"""

__version__ = "0.1.0"
__all__ = ["__version__", "load_finetuned"]

_LAZY = {"load_finetuned": "ftjax.finetuned"}  # name -> the module defining it


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ftjax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
