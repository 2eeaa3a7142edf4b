"""`--format=peft`: a LoRA run as a Hugging Face PEFT adapter, and a PEFT LoRA adapter read back
into ftjax.

    python -m ftjax.export --workdir=runs/minilm_rt_lora --out=exports/minilm_rt_lora --format=peft
    base = AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=2)
    model = peft.PeftModel.from_pretrained(base, "exports/minilm_rt_lora")

    pre = load_peft_adapter("exports/minilm_rt_lora")  # or any peft-saved LoRA adapter folder
    logits, _ = pre.model.apply(pre.params, pre.state, batch, train=False)

The folder holds what peft 0.21's `save_pretrained` writes: adapter_config.json and
adapter_model.safetensors, whose keys are `base_model.model.<module>.lora_A.weight` (rank, in)
= ftjax's A.T, `...lora_B.weight` (out, rank) = B.T, and each saved module's own tensors as
`base_model.model.<module>.weight` (peft drops its wrapper's names when saving). Module names
are the task class's (`bert.encoder.layer.0.attention.self.query`), from the same key rules as
the hf export. `target_modules` lists the adapted modules by full name, so peft adapts exactly
ftjax's. `modules_to_save` holds the task head, always new, and every other module whose params
differ from the pretrained checkpoint's (a plan that also unfroze a layer); a Dense both adapted
and changed is saved merged (W + A B alpha / rank), as peft never adapts a module it saves.

The base model: the pretrained checkpoint folder when a stock transformers class computes the
run's model; under mean pooling, which none does, `base/` holds the pretrained backbone in the
hf export's layout (its mean-pooling class, trust_remote_code). README.md says how to load it.

Not here: the merged export (`hf.py`), LoRA itself (`ftjax.lora`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import safe_open

from ftjax import lora
from ftjax.export import families, hf, state_dict
from ftjax.export.common import (
    ExportError,
    Summary,
    copy_tokenizer,
    id2label,
    readme,
    write_json,
    write_safetensors,
)
from ftjax.inference import Run
from ftjax.lora import LoraSpec
from ftjax.models.base import Params
from ftjax.pretrained import registry, sources
from ftjax.pretrained.load import Pretrained, example_batch, load_pretrained

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "BASE_FOLDER",
    "TASK_TYPES",
    "check_lora",
    "export_peft",
    "adapter_tensors",
    "load_peft_adapter",
]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
BASE_FOLDER = "base"
PREFIX = "base_model.model."  # peft's PeftModel -> LoraModel -> the task class
TASK_TYPES = {
    "classification": "SEQ_CLS",
    "multi_label": "SEQ_CLS",
    "regression": "SEQ_CLS",
    "token_classification": "TOKEN_CLS",
    "extractive_qa": "QUESTION_ANS",
}
# peft task type -> the ftjax task whose head and key rules it reads (any example-level task
# has the same head layout).
_IMPORT_TASKS = {"SEQ_CLS": "classification", "TOKEN_CLS": "token_classification"}
_IMPORT_TASKS["QUESTION_ANS"] = "extractive_qa"
_AUTO = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
}


# ----------------------------------------------------------------------------- export


def check_lora(record: Mapping[str, Any], workdir: str | Path) -> None:
    """ExportError unless the run of `record` trained LoRA adapters."""
    if not record.get("lora"):
        raise ExportError(
            f"{workdir} is not a LoRA run (its inference record has no lora settings), so it "
            "has no adapter to export as peft; export the whole model with --format=hf"
        )


def _text_family(run: Run) -> families.Family:
    check_lora(run.record, run.workdir)
    family = families.get(run.arch, run.task.name)
    if family.kind != "text":
        raise ExportError(
            f"--format=peft exports text encoders only, not {run.arch!r}; export this LoRA run "
            "merged with --format=hf"
        )
    return family


def _pretrained(run: Run) -> Pretrained:
    """The run's pretrained starting point (zero head), to compare its params against."""
    source = run.record["source"]
    try:
        return load_pretrained(
            source,
            run.task.output_size,
            arch=run.arch,
            config=run.record["checkpoint_config"],
            pooling=run.record["options"]["pooling"],
            zero_init_head=True,
        )
    except (ValueError, OSError) as e:  # SourceError, ArchitectureError, a vanished folder
        raise ExportError(
            f"the run's pretrained source {source!r} cannot be read ({e}); the peft export needs "
            "it as the adapter's base, and to find the params the run changed"
        ) from None


def _flat(params: Params) -> dict[str, Any]:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(params)).items()}


def _unflat(flat: Mapping[str, Any]) -> Params:
    return traverse_util.unflatten_dict({tuple(p.split("/")): v for p, v in flat.items()})


def _float_base(run: Run, pre: Pretrained) -> tuple[Run, Pretrained]:
    """A run on a quantised base (QLoRA) as the float run it computes: every quantised kernel
    dequantised, in the run and in the pretrained params alike, so the adapter's base (base/)
    is the base the run computed with. Other runs as they are."""
    if not run.record["lora"].get("base_qtype"):
        return run, pre
    spec = LoraSpec(**run.record["lora"])
    flat = _flat(run.params)
    zero_b = {p: jnp.zeros_like(v) if p.endswith("_lora_b") else v for p, v in flat.items()}
    dequantised = _flat(lora.merge(_unflat(zero_b), spec))  # W + A 0: the dequantised W
    kernels = [p.removesuffix("/qvalue") for p in flat if p.endswith("/kernel/qvalue")]
    adapters = {p: v for p, v in flat.items() if re.fullmatch(lora.LORA_PARAMS, p)}
    base = {**_flat(pre.params), **{k: dequantised[k] for k in kernels}}
    record = {**run.record, "lora": {**run.record["lora"], "base_qtype": ""}}
    run = dataclasses.replace(run, params=_unflat({**dequantised, **adapters}), record=record)
    return run, dataclasses.replace(pre, params=_unflat(base))


def _saved_modules(run: Run, family: families.Family, pre: Pretrained) -> set[str]:
    """Flax module paths saved whole: the head's, and those with a param the run changed from
    the checkpoint or the checkpoint lacked (the adapters themselves aside)."""
    ours, theirs = _flat(lora.base_params(run.params)), _flat(pre.params)
    fresh = set(pre.report.reinitialised)
    head, skip = re.compile(run.model.head_pattern), [re.compile(r) for r in hf.unused(run, family)]
    saved = set()
    for path, value in ours.items():
        if any(rx.fullmatch(path) for rx in skip):
            continue
        changed = path in fresh or path not in theirs
        changed = changed or not np.array_equal(np.asarray(value), np.asarray(theirs[path]))
        if head.fullmatch(path) or changed:
            saved.add(path.rsplit("/", 1)[0])
    return saved


def _merge_saved(params: Params, spec: LoraSpec, saved: set[str]) -> Params:
    """`params` with the adapters of the `saved` modules folded into their kernels."""
    flat, merged = _flat(params), _flat(lora.merge(params, spec))
    out = {}
    for path, value in flat.items():
        module = path.rsplit("/", 1)[0]
        if module in saved and re.fullmatch(lora.LORA_PARAMS, path):
            continue
        out[tuple(path.split("/"))] = merged[path] if module in saved else value
    return traverse_util.unflatten_dict(out)


def _module(key: str) -> str:
    return key.rsplit(".", 1)[0]


def _linear(transform: Any, kernel: Any) -> bool:
    """Whether a Flax kernel is a torch Linear's weight (what peft's LoRA layers adapt)."""
    return kernel.ndim == 2 and state_dict.forward(transform) is state_dict.forward("linear")


def _adapters(
    params: Params, keys: Mapping[str, tuple[str, Any]]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """peft's lora_A / lora_B tensors of every adapter left in `params`, and the modules."""
    flat, tensors, modules = _flat(params), {}, set()
    for path in lora.lora_paths(params):
        if not path.endswith("_lora_a"):
            continue
        kernel = path.removesuffix("_lora_a")
        key, transform = keys[kernel]
        a, b = np.asarray(flat[path], np.float32), np.asarray(flat[kernel + "_lora_b"], np.float32)
        if not (_linear(transform, flat[kernel]) and a.ndim == b.ndim == 2):
            raise ExportError(
                f"the adapter on {kernel} is not on a 2-D Dense kernel (A {a.shape}, B {b.shape}); "
                "peft's LoRA layers are torch Linear only: export the run merged with --format=hf"
            )
        modules.add(_module(key))
        tensors[f"{PREFIX}{_module(key)}.lora_A.weight"] = np.ascontiguousarray(a.T)
        tensors[f"{PREFIX}{_module(key)}.lora_B.weight"] = np.ascontiguousarray(b.T)
    return tensors, sorted(modules)


def adapter_tensors(
    run: Run, family: families.Family, pre: Pretrained
) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """(adapter_model.safetensors' tensors, target_modules, modules_to_save) of a LoRA `run`."""
    spec = LoraSpec(**run.record["lora"])
    saved = _saved_modules(run, family, pre)
    params = _merge_saved(run.params, spec, saved)
    keys = state_dict.key_map(
        _flat(lora.base_params(params)),
        hf.rule_sets(family, run.record["checkpoint_config"], run.task.name),
        hf.unused(run, family),
    )
    weights = hf.torch_weights(dataclasses.replace(run, params=lora.base_params(params)), family)
    head = re.compile(run.model.head_pattern)
    to_save = set()
    for path, (key, _) in keys.items():
        if head.fullmatch(path):
            to_save.add(key.split(".", 1)[0])  # the task class's head module ("classifier")
        elif path.rsplit("/", 1)[0] in saved:
            to_save.add(_module(key))
    tensors, targets = _adapters(params, keys)
    for key, value in weights.items():
        if any(key.startswith(m + ".") for m in to_save):
            tensors[PREFIX + key] = value
    return tensors, targets, sorted(to_save)


def _adapter_config(
    spec: LoraSpec, task_type: str, base: str, targets: list[str], to_save: list[str]
) -> dict[str, Any]:
    """adapter_config.json: the LoraConfig fields whose defaults differ or that say ftjax's
    LoRA is plain LoRA (peft fills the rest with its defaults on load)."""
    alpha = int(spec.alpha) if float(spec.alpha).is_integer() else spec.alpha
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base,
        "r": spec.rank,
        "lora_alpha": alpha,
        "lora_dropout": spec.dropout,
        "target_modules": targets,
        "modules_to_save": to_save,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def _write_base(run: Run, pre: Pretrained, stage: Path, out: Path, qtype: str) -> list[str]:
    """`base/`: the pretrained backbone (zero head) in the hf export's layout, for a run no stock
    class computes (mean pooling) or whose base is not the checkpoint's (`qtype`: quantised,
    then dequantised); returns its files."""
    record = {**run.record, "lora": None}
    base_run = Run(
        run.workdir,
        run.model.base,
        pre.params,
        pre.state,
        run.task,
        run.preprocessing,
        record,
        "pretrained",
        0,
    )
    (stage / BASE_FOLDER).mkdir()
    summary = hf.export_hf(base_run, stage / BASE_FOLDER, out / BASE_FOLDER)
    (stage / BASE_FOLDER / "README.md").write_text(
        f"# Base model of the peft adapter in `{out}`\n\nThe pretrained `{run.record['source']}` "
        f"backbone, unadapted, as {summary.model_class}{_base_what(run, qtype)}. Its head is "
        "zero: the adapter's modules_to_save replaces it.\n"
    )
    return [f"{BASE_FOLDER}/{name}" for name in summary.files]


def _base_what(run: Run, qtype: str) -> str:
    what = []
    if run.record["options"]["pooling"] == "mean":
        what.append("ftjax's mean pooling: load it with `trust_remote_code=True`")
    if qtype:
        what.append(f"the adapted kernels {qtype}-quantised and dequantised, as the run saw them")
    return f" ({'; '.join(what)})" if what else ""


def _load_snippet(out: Path, base: str, task_type: str, num_labels: int, custom: bool) -> str:
    auto = _AUTO[task_type]
    trust = ", trust_remote_code=True" if custom else ""
    return (
        f"from peft import PeftModel\nfrom transformers import {auto}\n"
        f'base = {auto}.from_pretrained("{base}", num_labels={num_labels}{trust})\n'
        f'model = PeftModel.from_pretrained(base, "{out}")  # tokenizer: AutoTokenizer, same folder'
    )


def _readme(run: Run, summary: Summary, spec: LoraSpec) -> str:
    labels = ", ".join(id2label(run.task, run.record).values())
    intro = (
        f"The {run.checkpoint} checkpoint (step {run.step}) of an ftjax LoRA run: architecture "
        f"`{run.arch}`, task `{run.task.name}`, pooling `{run.record['options']['pooling']}`, "
        f"from `{run.record.get('source')}`; LoRA targets `{spec.targets}`, rank {spec.rank}, "
        f"alpha {spec.alpha:g}. Outputs: {labels}."
    )
    files = "Files: " + ", ".join(f"`{f}`" for f in summary.files) + "."
    return readme("PEFT LoRA adapter exported by ftjax", intro, summary, files)


def _notes(run: Run, to_save: list[str], custom: bool, qtype: str) -> tuple[str, ...]:
    notes = [f"modules_to_save (saved whole, not adapted): {', '.join(to_save)}"]
    if qtype:
        notes.append(
            f"the run trained on a base quantised to {qtype}: {BASE_FOLDER}/ holds those base "
            "kernels dequantised, the base this adapter computes the run's outputs on (on the "
            "float pretrained checkpoint they would differ by the quantisation error)"
        )
    if custom:
        notes.append(
            f"this run used mean pooling, which no stock transformers class computes: the base "
            f"model is {BASE_FOLDER}/ (the pretrained backbone with the mean-pooling class of "
            "--format=hf), loaded with trust_remote_code=True"
        )
    if run.task.name == "regression":
        notes.append(
            f"the output is in the target's own units: the standardisation (mean "
            f"{run.task.target_mean:g}, std {run.task.target_std:g}) is folded into the head"
        )
    notes.append("ftjax.export.load_peft_adapter reads the adapter back into ftjax")
    return tuple(notes)


def export_peft(run: Run, stage: Path, out: Path) -> Summary:
    """Writes the peft adapter folder of the LoRA `run` into `stage` (which becomes `out`)."""
    family = _text_family(run)
    qtype = run.record["lora"].get("base_qtype") or ""
    run, pre = _float_base(run, _pretrained(run))
    spec, task_type = LoraSpec(**run.record["lora"]), TASK_TYPES[run.task.name]
    tensors, targets, to_save = adapter_tensors(run, family, pre)
    custom = hf._mean_pooled(run, family)
    files = [CONFIG_FILE, WEIGHTS_FILE, *copy_tokenizer(run.preprocessing, stage)]
    if custom or qtype:
        files += _write_base(run, pre, stage, out, qtype)
        base = str(out / BASE_FOLDER)
    else:
        base = str(sources.resolve(run.record["source"]).folder)
    write_safetensors(stage / WEIGHTS_FILE, tensors, {"format": "pt"})
    write_json(stage / CONFIG_FILE, _adapter_config(spec, task_type, base, targets, to_save))
    summary = Summary(
        out=out,
        format="peft",
        model_class=f"peft LoRA adapter ({task_type}) on {hf.model_class(run, family)[0]}",
        files=tuple(sorted([*files, "README.md"])),
        load=_load_snippet(out, base, task_type, run.task.output_size, custom),
        notes=_notes(run, to_save, custom, qtype),
    )
    (stage / "README.md").write_text(_readme(run, summary, spec))
    return summary


# ----------------------------------------------------------------------------- import

# adapter_config.json entries that change what LoRA computes in ways ftjax's LoRA cannot:
# each must be absent or falsy (empty, None, False).
_UNSUPPORTED = {
    "use_dora": "DoRA (weight-decomposed LoRA)",
    "use_rslora": "rank-stabilised LoRA (scale alpha / sqrt(r))",
    "rank_pattern": "per-module ranks",
    "alpha_pattern": "per-module alphas",
    "fan_in_fan_out": "Conv1D-style (in, out) weights",
    "lora_bias": "a bias on lora_B",
    "layers_to_transform": "a layer subset (name the modules in target_modules instead)",
    "layers_pattern": "a layer subset (name the modules in target_modules instead)",
    "exclude_modules": "excluded modules (name the modules in target_modules instead)",
    "target_parameters": "LoRA on parameters rather than modules",
    "trainable_token_indices": "trainable token embeddings",
    "layer_replication": "replicated layers",
    "use_qalora": "QA-LoRA",
    "alora_invocation_tokens": "activated LoRA",
    "use_bdlora": "block-diagonal LoRA",
}


def _read_adapter_config(folder: Path) -> dict[str, Any]:
    """adapter_config.json, checked to be plain LoRA on modules, with its weights beside it."""
    if not (folder / CONFIG_FILE).is_file():
        raise ExportError(
            f"{folder} holds no {CONFIG_FILE}: it is not a peft adapter folder (one that "
            "PeftModel.save_pretrained or python -m ftjax.export --format=peft wrote)"
        )
    if not (folder / WEIGHTS_FILE).is_file():
        other = (
            " (adapter_model.bin is there: re-save it with safetensors)"
            * (folder / "adapter_model.bin").is_file()
        )
        raise ExportError(f"{folder} holds no {WEIGHTS_FILE}{other}")
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config.get("peft_type") != "LORA":
        raise ExportError(
            f"{folder / CONFIG_FILE} has peft_type {config.get('peft_type')!r}; ftjax reads LORA "
            "adapters only"
        )
    if config.get("bias", "none") != "none":
        raise ExportError(
            f"{folder / CONFIG_FILE} has bias={config['bias']!r}: the adapter trained biases, which "
            "ftjax's LoRA does not represent; ftjax reads adapters with bias='none'"
        )
    used = [f"{k}={config[k]!r} ({what})" for k, what in _UNSUPPORTED.items() if config.get(k)]
    if used:
        raise ExportError(
            f"{folder / CONFIG_FILE} uses what ftjax's LoRA (W + A B alpha / r on Dense layers) "
            f"cannot represent: {'; '.join(used)}"
        )
    if config.get("task_type") not in _IMPORT_TASKS:
        raise ExportError(
            f"{folder / CONFIG_FILE} has task_type {config.get('task_type')!r}; ftjax reads "
            f"adapters of the tasks {sorted(_IMPORT_TASKS)}"
        )
    if config.get("target_modules") == "all-linear":
        raise ExportError(
            f"{folder / CONFIG_FILE} has target_modules='all-linear', whose meaning is peft's "
            "model-dependent rule; list the adapted modules (or a regex) instead"
        )
    return config


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    """The adapter's tensors by task-class key (peft's `base_model.model.` prefix removed)."""
    with safe_open(str(path), "np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    stray = sorted(k for k in tensors if not k.startswith(PREFIX))
    if stray:
        raise ExportError(f"{path} has keys outside {PREFIX!r}, not peft's layout: {stray[:5]}")
    return {k.removeprefix(PREFIX): v for k, v in tensors.items()}


def _base_source(folder: Path, config: Mapping[str, Any], source: str | Path | None) -> str:
    """The base checkpoint: `source`, else the adapter's own base/ (an ftjax export), else its
    base_model_name_or_path."""
    if source is not None:
        return str(source)
    if (folder / BASE_FOLDER / "config.json").is_file():
        return str(folder / BASE_FOLDER)
    if not config.get("base_model_name_or_path"):
        raise ExportError(
            f"{folder / CONFIG_FILE} names no base_model_name_or_path; pass source= (the base "
            "checkpoint the adapter was trained on)"
        )
    return config["base_model_name_or_path"]


def _base_config(source: str) -> tuple[sources.Checkpoint, dict[str, Any]]:
    try:
        checkpoint = sources.resolve(source)
    except (ValueError, OSError) as e:
        raise ExportError(f"the adapter's base model cannot be read: {e}") from None
    if checkpoint.config_file is None:
        raise ExportError(f"the adapter's base model {checkpoint.folder} has no config.json")
    return checkpoint, json.loads(checkpoint.config_file.read_text())


def _pooling(task: str, config: Mapping[str, Any]) -> str:
    """ftjax's pooling for the base's task class: mean for ftjax's mean-pooling classes."""
    if task != "classification":
        return "tokens"
    mean = config.get("ftjax", {}).get("pooling") == "mean" or any(
        "MeanPooling" in a for a in config.get("architectures") or ()
    )
    return "mean" if mean else "cls"


def _num_classes(tensors: Mapping[str, np.ndarray], family: families.Family, task: str) -> int:
    """The head's output size, from its output layer's weight, which the adapter must hold."""
    layer = "/".join(family.output_layer if task == "classification" else ("head",))
    rules = [(hf.head_rules(family, task), "")]
    key = state_dict.key_map([f"{layer}/kernel"], rules)[f"{layer}/kernel"][0]
    if key not in tensors:
        raise ExportError(
            f"the adapter holds no weights for the task head ({PREFIX}{key}): ftjax gives every "
            "task a new head, so it needs the trained one (peft saves it when the head is in "
            "modules_to_save, as task_type SEQ_CLS, TOKEN_CLS and QUESTION_ANS do)"
        )
    return int(tensors[key].shape[0])


def _matches(config: Mapping[str, Any], module: str) -> bool:
    """Whether peft adapts `module` (its check_target_module_exists for these settings)."""
    if any(re.match(rf"(^|.*\.){m}($|\..*)", module) for m in config.get("modules_to_save") or ()):
        return False  # peft never adapts a module it saves whole
    targets = config.get("target_modules") or ()
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return module in targets or any(module.endswith(f".{t}") for t in targets)


def _targets(
    config: Mapping[str, Any], keys: Mapping[str, tuple[str, Any]], params: Mapping[str, Any]
) -> dict[str, str]:
    """torch module -> Flax module path of every module peft adapts; errors for non-Dense ones
    or none at all."""
    dense, other = {}, set()
    for path, (key, transform) in keys.items():
        if path.endswith("/kernel") and _linear(transform, params[path]):
            dense[_module(key)] = path.removesuffix("/kernel")
        else:
            other.add(_module(key))
    other -= set(dense)
    wrong = sorted(m for m in other if _matches(config, m))
    if wrong:
        raise ExportError(
            f"target_modules {config.get('target_modules')!r} adapts modules that are not Dense "
            f"(torch Linear) layers, which ftjax's LoRA cannot: {wrong[:5]}"
        )
    found = {m: dense[m] for m in sorted(dense) if _matches(config, m)}
    if not found:
        raise ExportError(
            f"target_modules {config.get('target_modules')!r} matches no Dense layer of the base "
            f"model; its Dense layers are named like {sorted(dense)[:3]}"
        )
    return found


def _spec(config: Mapping[str, Any], targets: Iterable[str]) -> LoraSpec:
    regex = "|".join(re.escape(path) for path in targets)
    return LoraSpec(
        targets=f"({regex})",
        rank=int(config["r"]),
        alpha=float(config.get("lora_alpha", 8)),
        dropout=float(config.get("lora_dropout", 0.0)),
    )


def _fill(
    flat: dict[str, Any],
    tensors: Mapping[str, np.ndarray],
    keys: Mapping[str, tuple[str, Any]],
    targets: Mapping[str, str],
    head: Iterable[str],
) -> None:
    """The adapter's tensors into the flat Flax params `flat` (which has the fresh adapters):
    lora_A/B transposed into kernel_lora_a/b, every other tensor by the key rules."""
    by_key = {key: (path, transform) for path, (key, transform) in keys.items()}
    values, unknown = {}, []
    for key, value in tensors.items():
        module, _, rest = key.rpartition(".lora_")
        if module in targets and rest in ("A.weight", "B.weight"):
            values[f"{targets[module]}/kernel_lora_{rest[0].lower()}"] = value.T
        elif key in by_key:
            path, transform = by_key[key]
            values[path] = state_dict.forward(transform)(value)
        else:
            unknown.append(key)
    needed = [p for p in flat if re.fullmatch(lora.LORA_PARAMS, p)] + list(head)
    missing = [p for p in needed if p not in values]
    shapes = [
        f"{p}: file {tuple(v.shape)}, model {tuple(flat[p].shape)}"
        for p, v in values.items()
        if tuple(v.shape) != tuple(flat[p].shape)
    ]
    if unknown or missing or shapes:
        raise ExportError(
            f"the adapter's tensors do not fit the base model with its target_modules: keys "
            f"matching no module {unknown[:5]}, adapters or head params missing {missing[:5]}, shape "
            f"mismatches {shapes[:5]}"
        )
    flat.update({p: jnp.asarray(v, flat[p].dtype) for p, v in values.items()})


def load_peft_adapter(folder: str | Path, source: str | Path | None = None) -> Pretrained:
    """A peft LoRA adapter folder as an ftjax model with LoRA (`model`, a LoraModel) and its
    params: the base from `source` (default: the folder's base/, else the config's
    base_model_name_or_path), adapters and saved modules from the folder. The head is the
    adapter's; it outputs what the adapted transformers model outputs."""
    folder = Path(folder).absolute()
    config = _read_adapter_config(folder)
    task = _IMPORT_TASKS[config["task_type"]]
    tensors = _read_tensors(folder / WEIGHTS_FILE)
    source = _base_source(folder, config, source)
    checkpoint, base_config = _base_config(source)
    arch = registry.detect(base_config, str(checkpoint.config_file)).name
    family = families.get(arch, task)
    pooling = _pooling(task, base_config)
    skip = family.unused_at_mean if pooling == "mean" else ()  # an ftjax base/ lacks them
    num_classes = _num_classes(tensors, family, task)
    try:
        pre = load_pretrained(source, num_classes, arch=arch, pooling=pooling, dont_load=skip)
    except ValueError as e:  # the checkpoint does not fit its own config
        raise ExportError(f"the adapter's base model {source} cannot be loaded: {e}") from None
    base = _flat(pre.params)
    keys = state_dict.key_map(base, hf.rule_sets(family, pre.config, task), skip)
    targets = _targets(config, keys, base)
    spec = _spec(config, targets.values())
    model = lora.with_lora(pre.model, spec)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), example_batch(model, pre.preprocessing))
    )[0]
    flat = {**base, **{p: v for p, v in _flat(shapes).items() if p not in base}}
    head = [p for p in base if re.fullmatch(pre.model.head_pattern, p)]
    _fill(flat, tensors, keys, targets, head)
    params = traverse_util.unflatten_dict({tuple(p.split("/")): v for p, v in flat.items()})
    return dataclasses.replace(pre, model=model, params=params)
