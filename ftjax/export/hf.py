"""`--format=hf`: a folder that transformers' Auto classes and pipelines load in PyTorch.

    python -m ftjax.export --workdir=runs/minilm_rt --out=exports/minilm_rt --format=hf
    pipeline("text-classification", model="exports/minilm_rt", trust_remote_code=True)

The folder holds config.json (the checkpoint's config with `architectures`, the labels,
`problem_type`), model.safetensors, the run's tokenizer files (text) or a preprocessor_config.json
(images) and a README.md. Tasks map to classes as transformers names them: classification,
multi-label and regression -> *ForSequenceClassification (*ForImageClassification for ViT, ResNet,
ConvNeXt and DINOv2), token classification -> *ForTokenClassification, extractive QA ->
*ForQuestionAnswering. The backbone's keys come from inverting the architecture's key rules
(`state_dict.py`), the head's from `families.py`. A regression head is exported with the
target standardisation folded in, so the model outputs the target's own units.

A LoRA run is exported merged (`merge_lora`: W + A B alpha / rank in every adapted kernel), as
the plain task class; `--format=peft` writes the adapters alone (`peft_format.py`). A quantised
run (`ftjax.compress.quantize`) is exported dequantised, float32 (`float_run`), with a note that
the export is not smaller; `--format=flax` keeps its int8 kernels.

Mean pooling has no stock class: the export then carries `modeling_ftjax_pooling.py` and names
its class in config.json's `auto_map`, loaded with `trust_remote_code=True`; without it,
transformers silently builds the stock class, which reads the first token (BERT/ALBERT: the
pooler) instead of the mean.

Not here: EfficientNet-Lite (`lite.py`) and torchvision's MobileNetV2 (`torchvision_format.py`),
which have no transformers class; the Flax format (`flax_format.py`), reading the run
(`ftjax.inference.load_run`).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftjax import lora
from ftjax.compress import quantize
from ftjax.export import families, state_dict
from ftjax.export.common import (
    ExportError,
    Summary,
    copy_tokenizer,
    id2label,
    image_processor_config,
    lora_note,
    problem_type,
    quantization_note,
    readme,
    write_json,
    write_safetensors,
)
from ftjax.inference import Run
from ftjax.lora import LoraModel, LoraSpec
from ftjax.pretrained import registry
from ftjax.pretrained.arch import KeyRule

__all__ = [
    "MODELING_FILE",
    "export_hf",
    "merge_lora",
    "float_run",
    "torch_weights",
    "rule_sets",
    "head_rules",
    "unused",
    "hf_config",
    "model_class",
    "base_prefix",
]

MODELING_FILE = Path(__file__).with_name("modeling_ftjax_pooling.py")

# task -> (class and Auto class suffix, pipeline task): text models by task; image models.
_TEXT = {
    "classification": ("ForSequenceClassification", "text-classification"),
    "multi_label": ("ForSequenceClassification", "text-classification"),
    "regression": ("ForSequenceClassification", "text-classification"),
    "token_classification": ("ForTokenClassification", "token-classification"),
    "extractive_qa": ("ForQuestionAnswering", "question-answering"),
}
_IMAGE = ("ForImageClassification", "image-classification")

# Checkpoint config keys that describe the checkpoint's own head or files, not this export's.
_STALE_KEYS = (
    "architectures",
    "auto_map",
    "id2label",
    "label2id",
    "num_labels",
    "problem_type",
    "finetuning_task",
    "torch_dtype",
    "dtype",
    "_name_or_path",
    "transformers_version",
)


def _mean_pooled(run: Run, family: families.Family) -> bool:
    return family.kind == "text" and run.record["options"]["pooling"] == "mean"


def _check_head_size(config: dict[str, Any]) -> None:
    """transformers' attention derives the head size as hidden_size / num_attention_heads; a
    head-pruned model (`ftjax.compress.structured`) keeps its heads' own size."""
    size, heads = config.get("attention_head_size"), config.get("num_attention_heads")
    if size and heads and size * heads != config.get("hidden_size"):
        raise ExportError(
            f"this model has {heads} attention heads of size {size} with hidden size "
            f"{config.get('hidden_size')} (structured head pruning); transformers' classes "
            "require heads x head size = hidden size, so --format=hf cannot hold it: export it "
            "with --format=flax"
        )


def model_class(run: Run, family: families.Family) -> tuple[str, str, str]:
    """(model class, Auto class, pipeline task) of the run's export."""
    _check_head_size(run.record["checkpoint_config"])
    if family.class_prefix is None:
        raise ExportError(
            f"{family.arch} has no transformers class: --format=hf writes it in its reference "
            "package's state-dict layout (ftjax.export.lite, ftjax.export.torchvision_format)"
        )
    prefix = family.class_prefix(run.record["checkpoint_config"])
    suffix, pipeline = _TEXT[run.task.name] if family.kind == "text" else _IMAGE
    name = f"{prefix}{suffix}"
    if _mean_pooled(run, family):
        name = f"{prefix}MeanPooling{suffix}"
    return name, f"AutoModel{suffix}", pipeline


def base_prefix(arch: str) -> str:
    """The key prefix of the backbone inside a task class ("bert."): the architecture's one
    non-empty key prefix ("" when it has none)."""
    prefixes = [p for p in registry.get(arch).key_prefixes if p]
    if len(prefixes) > 1:
        raise ExportError(f"{arch} has several key prefixes {prefixes}; export needs one")
    return prefixes[0] if prefixes else ""


def torch_weights(run: Run, family: families.Family) -> dict[str, Any]:
    """The run's params as the task class's state dict (numpy), regression in target units."""
    task, params = run.task, run.params
    if task.name == "regression":
        params = state_dict.fold_standardisation(
            params, family.output_layer, task.target_mean, task.target_std
        )
    variables = state_dict.flat_variables(params, run.model_state)
    weights = state_dict.to_torch(variables, _rule_sets(run, family), unused(run, family))
    if family.constant_keys is not None:
        prefix = base_prefix(family.arch)
        constants = family.constant_keys(run.record["checkpoint_config"])
        weights.update({prefix + k: v for k, v in constants.items()})
    return state_dict.add_batch_norm_counters(weights)


def rule_sets(
    family: families.Family, config: dict[str, Any], task: str
) -> list[state_dict.RuleSet]:
    """The key rules of `task`'s class (`config`: the checkpoint config): the backbone's, under
    its prefix, and the head's. A head rule for a Flax path a backbone rule names too replaces
    it: DeBERTa-v2's pooler is ftjax backbone, but its task class keeps it beside the base model
    (`pooler.dense`, not `deberta.pooler.dense`)."""
    head = head_rules(family, task)
    replaced = {rx for rx, _, _ in head}
    backbone = [r for r in registry.get(family.arch).key_rules(config) if r[0] not in replaced]
    return [(backbone, base_prefix(family.arch)), (head, "")]


def head_rules(family: families.Family, task: str) -> Sequence[KeyRule]:
    """The key rules of `task`'s head: the family's sequence head, or the one-Dense token head."""
    if task in ("token_classification", "extractive_qa"):
        return families.token_head_rules(task)
    return family.sequence_head


def _rule_sets(run: Run, family: families.Family) -> list[state_dict.RuleSet]:
    return rule_sets(family, run.record["checkpoint_config"], run.task.name)


def unused(run: Run, family: families.Family) -> tuple[str, ...]:
    """Param path regexes the run's model never reads (the pooler under mean pooling)."""
    return family.unused_at_mean if _mean_pooled(run, family) else ()


def _provenance(run: Run) -> dict[str, Any]:
    """config.json's `ftjax` entry: where the weights come from."""
    out = {
        "arch": run.arch,
        "source": run.record.get("source"),
        "task": run.task.name,
        "checkpoint": run.checkpoint,
        "step": run.step,
    }
    if run.kind == "text":
        out["pooling"] = run.record["options"]["pooling"]
    if run.task.name == "regression":
        out["target_standardisation_folded"] = {
            "mean": run.task.target_mean,
            "std": run.task.target_std,
        }
    return out


def hf_config(run: Run, family: families.Family, name: str, auto_class: str) -> dict[str, Any]:
    """The checkpoint's config.json made this export's: class, labels, problem type, float32."""
    config = {k: v for k, v in run.record["checkpoint_config"].items() if k not in _STALE_KEYS}
    if family.model_type:
        config.setdefault("model_type", family.model_type)
    labels = id2label(run.task, run.record)
    config.update(
        architectures=[name],
        num_labels=len(labels),
        id2label={str(i): n for i, n in labels.items()},
        label2id={n: i for i, n in labels.items()},
        dtype="float32",  # transformers 5 loads in config.json's dtype; the weights are float32
    )
    if problem_type(run.task):
        config["problem_type"] = problem_type(run.task)
    if _mean_pooled(run, family):
        config["auto_map"] = {auto_class: f"{MODELING_FILE.stem}.{name}"}
    config["ftjax"] = _provenance(run)
    return config


def _pipeline_kwargs(run: Run) -> str:
    """The pipeline arguments that reproduce the run's own outputs."""
    if run.task.name == "token_classification":
        return ', aggregation_strategy="first"'  # ftjax tags a word by its first sub-token
    if run.task.name == "regression":
        return ', function_to_apply="none"'  # else the pipeline squashes the value with a sigmoid
    if run.task.name == "multi_label":
        return ", top_k=None"  # every label's sigmoid score
    return ""


_EXAMPLES = {
    "text-classification": '"A text to classify."',
    "token-classification": '"Alice met Bob in Paris."',
    "image-classification": '"image.jpg"',
}


def merge_lora(run: Run) -> Run:
    """`run` with its LoRA adapters folded into the kernels, as the model without LoRA (a run
    without adapters as it is): what the PyTorch formats export, since their classes have no
    adapters."""
    if not run.record.get("lora"):
        return run
    base = run.model.base if isinstance(run.model, LoraModel) else run.model
    spec = LoraSpec(**run.record["lora"])
    return dataclasses.replace(run, model=base, params=lora.merge(run.params, spec))


def float_run(run: Run) -> Run:
    """`run` as the PyTorch formats export it: int8 kernels dequantised, LoRA adapters merged."""
    return merge_lora(quantize.dequantized(run))


def _notes(run: Run, family: families.Family, name: str) -> tuple[str, ...]:
    notes = [n for n in (lora_note(run.record), quantization_note(run.record)) if n]
    if _mean_pooled(run, family):
        stock = name.replace("MeanPooling", "")
        if family.unused_at_mean:  # not exported: the stock class would draw a new one
            reads = (
                "the pooler output of the first token (a newly initialised pooler: one load "
                "warning is the only sign)"
            )
        else:
            reads = "the first token (with no warning at all)"
        notes.append(
            f"this run used mean pooling, which the stock {stock} cannot express: the export "
            f"carries {MODELING_FILE.name} (registered in config.json's auto_map), so load it "
            f"with trust_remote_code=True. Without it, transformers silently falls back to the "
            f"stock {stock}, which classifies {reads} instead of the mean, so its predictions "
            "differ. (The text-classification pipeline warns that the mean-pooling class is not "
            "in its list of models; it runs it all the same.)"
        )
    if run.task.name == "regression":
        notes.append(
            f"the output is in the target's own units: the standardisation (mean "
            f"{run.task.target_mean:g}, std {run.task.target_std:g}) is folded into the head"
        )
    if run.task.name == "extractive_qa":
        params, data = run.record["task"].get("params", {}), run.record["data"]
        notes.append(
            "transformers 5 has no question-answering pipeline: take the span from start_logits "
            f"and end_logits (the run read windows of {run.preprocessing.get('max_length')} tokens "
            f"with doc_stride {data.get('doc_stride')}, answers of at most "
            f"{params.get('max_answer_length')} tokens)"
        )
    if run.kind == "text" and "max_length" in run.preprocessing:
        notes.append(
            f"the run read at most {run.preprocessing['max_length']} tokens "
            "(tokenizer_config.json's model_max_length); pass truncation=True to cut longer "
            "texts the same way"
        )
    return tuple(notes)


def _load_snippet(
    out: Path, name: str, auto_class: str, pipeline: str, run: Run, custom: bool
) -> str:
    trust = ", trust_remote_code=True" if custom else ""
    if pipeline == "question-answering":  # transformers 5 removed this pipeline
        return (
            f"from transformers import {auto_class}, AutoTokenizer\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{out}")\n'
            f'model = {auto_class}.from_pretrained("{out}")  # {name}\n'
            'inputs = tokenizer("Who met Bob?", "Alice met Bob in Paris.", '
            'truncation="only_second", return_tensors="pt")\n'
            "outputs = model(**inputs)  # start_logits, end_logits: one score per token"
        )
    # The comment goes after the call: inside it, it would swallow the closing parentheses.
    note = "  # a path, URL or PIL image" if run.kind == "image" else ""
    return (
        f"from transformers import {auto_class}, pipeline\n"
        f'model = {auto_class}.from_pretrained("{out}"{trust})  # {name}\n'
        f'predict = pipeline("{pipeline}", model="{out}"{trust}{_pipeline_kwargs(run)})\n'
        f"print(predict({_EXAMPLES[pipeline]})){note}"
    )


def _readme(run: Run, summary: Summary) -> str:
    labels = ", ".join(id2label(run.task, run.record).values())
    pooling = f", pooling `{run.record['options']['pooling']}`" if run.kind == "text" else ""
    intro = (
        f"The {run.checkpoint} checkpoint (step {run.step}) of an ftjax run: architecture "
        f"`{run.arch}`, task `{run.task.name}`{pooling}, trained from "
        f"`{run.record.get('source')}`. Outputs: {labels}."
    )
    files = "Files: " + ", ".join(f"`{f}`" for f in summary.files) + "."
    return readme(f"{summary.model_class} exported by ftjax", intro, summary, files)


def export_hf(run: Run, stage: Path, out: Path) -> Summary:
    """Writes the transformers folder of `run` into `stage` (which becomes `out`); a LoRA run's
    adapters are merged, a quantised run's kernels dequantised."""
    run = float_run(run)
    family = families.get(run.arch, run.task.name)
    name, auto_class, pipeline = model_class(run, family)
    custom = _mean_pooled(run, family)
    write_safetensors(stage / "model.safetensors", torch_weights(run, family), {"format": "pt"})
    write_json(stage / "config.json", hf_config(run, family, name, auto_class))
    files = ["config.json", "model.safetensors"]
    if custom:
        shutil.copy(MODELING_FILE, stage / MODELING_FILE.name)
        files.append(MODELING_FILE.name)
    if run.kind == "text":
        files += copy_tokenizer(run.preprocessing, stage)
    else:
        write_json(stage / "preprocessor_config.json", image_processor_config(run.preprocessing))
        files.append("preprocessor_config.json")
    summary = Summary(
        out=out,
        format="hf",
        model_class=name,
        files=tuple(sorted([*files, "README.md"])),
        load=_load_snippet(out, name, auto_class, pipeline, run, custom),
        notes=_notes(run, family, name),
    )
    (stage / "README.md").write_text(_readme(run, summary))
    return summary
