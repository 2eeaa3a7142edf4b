"""`--format=hf` for MobileNetV2: torchvision's own layout (transformers' MobileNetV2 is another
model, TF-ported, with other keys).

    python -m ftjax.export --workdir=runs/mnv2_flowers --out=exports/mnv2_flowers --format=hf

The folder holds model.safetensors, the state dict of `torchvision.models.mobilenet_v2` with the
run's head as `classifier.1` (`features.N.*`, batch-norm statistics and counters), which
`load_state_dict(..., strict=True)` accepts; config.json with the builder's arguments
(`num_classes`, `width_mult`, `round_nearest`, `dropout`), the run's image size and the labels;
preprocessor_config.json (ftjax's evaluation resize, crop and ImageNet mean/std); README.md with
the loading code. Keys come from inverting `ftjax.pretrained.arch_mobilenet_v2`'s rules plus the
head as `classifier.1`; regression folds the target standardisation into it.

config.json names `library` and `model_name` rather than a `model_type`, which transformers would
take for its own MobileNetV2 and load nothing into; ftjax's loader recognises the pair, so
`load_pretrained(out, num_classes=...)` reads the export back (with a new head, as always).

Not here: the transformers architectures (`hf.py`), EfficientNet-Lite (`lite.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftjax.export import families, hf
from ftjax.export.common import (
    Summary,
    image_processor_config,
    labels_and_origin,
    lora_note,
    quantization_note,
    readme,
    write_json,
    write_safetensors,
)
from ftjax.inference import Run
from ftjax.pretrained import arch_mobilenet_v2

__all__ = ["PACKAGE", "export_torchvision", "builder_arguments"]

PACKAGE = arch_mobilenet_v2.EXPORT_LIBRARY
# ftjax's MobileNetV2 config keys that torchvision's builder takes as they are.
_BUILDER_KEYS = ("width_mult", "round_nearest", "dropout")


def builder_arguments(run: Run) -> dict[str, Any]:
    """`torchvision.models.mobilenet_v2(**these)` builds the run's model."""
    config = run.record["checkpoint_config"]
    args: dict[str, Any] = {"num_classes": run.task.output_size}
    args.update({k: config[k] for k in _BUILDER_KEYS if k in config})
    if run.record["options"].get("dropout") is not None:
        args["dropout"] = run.record["options"]["dropout"]
    return args


def _config(run: Run) -> dict[str, Any]:
    size = run.preprocessing["image_size"]
    return {
        "library": PACKAGE,
        "model_name": arch_mobilenet_v2.MODEL_TYPE,
        **builder_arguments(run),
        "image_size": size if isinstance(size, int) else list(size),
        **labels_and_origin(run),
    }


def _load_snippet(out: Path, config: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={config[k]!r}" for k in ("num_classes", *_BUILDER_KEYS))
    return (
        "import torchvision\n"
        "from safetensors.torch import load_file\n"
        f"model = torchvision.models.mobilenet_v2({args})\n"
        f'model.load_state_dict(load_file("{out}/model.safetensors"), strict=True)\n'
        "model.eval()  # NCHW float input, preprocessed as preprocessor_config.json says"
    )


def _readme(run: Run, summary: Summary, config: dict[str, Any]) -> str:
    intro = (
        f"The {run.checkpoint} checkpoint (step {run.step}) of an ftjax run, task "
        f"`{run.task.name}`, outputs: {', '.join(config['id2label'].values())}. The weights are "
        "in the state-dict layout of torchvision's `mobilenet_v2` (not transformers' "
        "MobileNetV2, a TF-ported model with other keys)."
    )
    closing = (
        "config.json: the `mobilenet_v2` arguments, the image size and the labels; "
        "preprocessor_config.json: the input preprocessing (`AutoImageProcessor.from_pretrained` "
        "reads it). ftjax reads this folder back with `load_pretrained(folder, num_classes=...)`."
    )
    return readme("MobileNetV2 (torchvision) exported by ftjax", intro, summary, closing)


def export_torchvision(run: Run, stage: Path, out: Path) -> Summary:
    """Writes the torchvision folder of `run` into `stage` (which becomes `out`); a LoRA run's
    adapters are merged, a quantised run's kernels dequantised."""
    family = families.get(run.arch, run.task.name)
    run = hf.float_run(run)
    config = _config(run)
    write_safetensors(stage / "model.safetensors", hf.torch_weights(run, family), {"format": "pt"})
    write_json(stage / "config.json", config)
    write_json(stage / "preprocessor_config.json", image_processor_config(run.preprocessing))
    notes = []
    if run.task.name == "regression":
        notes.append(
            "the output is in the target's own units (standardisation folded into classifier.1)"
        )
    notes += [n for n in (lora_note(run.record), quantization_note(run.record)) if n]
    summary = Summary(
        out=out,
        format="hf",
        model_class=f"torchvision.models.mobilenet_v2 (width_mult {config['width_mult']:g})",
        files=("README.md", "config.json", "model.safetensors", "preprocessor_config.json"),
        load=_load_snippet(out, config),
        notes=tuple(notes),
    )
    (stage / "README.md").write_text(_readme(run, summary, config))
    return summary
