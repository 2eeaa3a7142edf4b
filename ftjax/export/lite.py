"""`--format=hf` for EfficientNet-Lite: its reference package's layout (transformers has no
class for it).

    python -m ftjax.export --workdir=runs/lite0_folder --out=exports/lite0 --format=hf

The folder holds model.safetensors, the state dict of `efficientnet_lite_pytorch.EfficientNet`
(`_conv_stem.weight`, `_blocks.N.*`, `_fc.*`, batch-norm statistics and counters), which
`load_state_dict(..., strict=True)` accepts; config.json with the `EfficientNet.from_name`
arguments that build the matching model (variant, scaling, the run's image size, which fixes
the package's static TF-style padding, and the number of outputs) and the labels;
preprocessor_config.json (what AutoImageProcessor reads: ftjax's evaluation resize, crop and
`(x - 127) / 128`); README.md with the loading code. Keys come from inverting the key rules of
`ftjax.pretrained.arch_efficientnet` plus the head as `_fc`; regression folds the target
standardisation into `_fc`.

Not here: the transformers architectures (`hf.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftjax.export import families, state_dict
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
from ftjax.export.hf import float_run
from ftjax.inference import Run
from ftjax.pretrained import registry

__all__ = ["PACKAGE", "export_lite", "from_name_arguments", "torch_weights"]

PACKAGE = "efficientnet-lite-pytorch"
# ftjax's Lite config keys that EfficientNet.from_name takes as they are.
_FROM_NAME_KEYS = ("width_coefficient", "depth_coefficient", "dropout_rate", "drop_connect_rate")


def from_name_arguments(run: Run) -> dict[str, Any]:
    """`EfficientNet.from_name(variant, **these)` builds the run's model."""
    config = run.record["checkpoint_config"]
    size = run.preprocessing["image_size"]
    args = {k: config[k] for k in _FROM_NAME_KEYS if k in config}
    if run.record["options"].get("dropout") is not None:
        args["dropout_rate"] = run.record["options"]["dropout"]
    args["image_size"] = size if isinstance(size, int) else list(size)
    args["num_classes"] = run.task.output_size
    return args


def torch_weights(run: Run) -> dict[str, Any]:
    """The run's variables as the package's state dict (numpy), regression in target units."""
    family = families.FAMILIES["efficientnet_lite"]
    params = run.params
    if run.task.name == "regression":
        params = state_dict.fold_standardisation(
            params, family.output_layer, run.task.target_mean, run.task.target_std
        )
    rules = registry.get(run.arch).key_rules(run.record["checkpoint_config"])
    variables = state_dict.flat_variables(params, run.model_state)
    weights = state_dict.to_torch(variables, [(rules, ""), (family.sequence_head, "")])
    return state_dict.add_batch_norm_counters(weights)


def _config(run: Run) -> dict[str, Any]:
    return {
        "library": PACKAGE,
        "model_name": run.record["checkpoint_config"].get("variant", "efficientnet-lite0"),
        "from_name": from_name_arguments(run),
        **labels_and_origin(run),
    }


def _load_snippet(out: Path, config: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in config["from_name"].items())
    return (
        "from efficientnet_lite_pytorch import EfficientNet\n"
        "from safetensors.torch import load_file\n"
        f'model = EfficientNet.from_name("{config["model_name"]}", {args})\n'
        f'model.load_state_dict(load_file("{out}/model.safetensors"), strict=True)\n'
        "model.eval()  # NCHW float input, preprocessed as preprocessor_config.json says"
    )


def _readme(run: Run, summary: Summary, config: dict[str, Any]) -> str:
    intro = (
        f"The {run.checkpoint} checkpoint (step {run.step}) of an ftjax run, task "
        f"`{run.task.name}`, outputs: {', '.join(config['id2label'].values())}. transformers has "
        f"no EfficientNet-Lite class: the weights are in the state-dict layout of "
        f"`{PACKAGE}` (`pip install {PACKAGE}`)."
    )
    closing = (
        "config.json: the `from_name` arguments and the labels; preprocessor_config.json: the "
        "input preprocessing (`AutoImageProcessor.from_pretrained` reads it)."
    )
    return readme(
        f"EfficientNet-Lite ({config['model_name']}) exported by ftjax", intro, summary, closing
    )


def export_lite(run: Run, stage: Path, out: Path) -> Summary:
    """Writes the efficientnet-lite-pytorch folder of `run` into `stage` (which becomes `out`);
    a LoRA run's adapters are merged, a quantised run's kernels dequantised."""
    families.get(run.arch, run.task.name)
    run = float_run(run)
    config = _config(run)
    write_safetensors(stage / "model.safetensors", torch_weights(run), {"format": "pt"})
    write_json(stage / "config.json", config)
    write_json(stage / "preprocessor_config.json", image_processor_config(run.preprocessing))
    notes = [
        f"built for {config['from_name']['image_size']} px inputs: the package's static padding is "
        "computed for that size"
    ]
    if run.task.name == "regression":
        notes.append("the output is in the target's own units (standardisation folded into _fc)")
    notes += [n for n in (lora_note(run.record), quantization_note(run.record)) if n]
    summary = Summary(
        out=out,
        format="hf",
        model_class=f"efficientnet_lite_pytorch.EfficientNet ({config['model_name']})",
        files=("README.md", "config.json", "model.safetensors", "preprocessor_config.json"),
        load=_load_snippet(out, config),
        notes=tuple(notes),
    )
    (stage / "README.md").write_text(_readme(run, summary, config))
    return summary
