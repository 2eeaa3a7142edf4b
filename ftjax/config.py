"""The run configuration: defaults for every key, validation, and the engine objects built from it.

Experiment files in `configs/` start from `defaults()` and change what they need; the command
line overrides single keys (`--config.train.epochs=2`). The config is locked, so an unknown key
is an error, and typed, so a value of the wrong type is an error; `validate` then checks values
before anything is loaded or compiled, naming the key and what would be accepted.

Plan vocabulary (`config.plan`):
  preset: one of ftjax.phases.PRESETS ('linear_probe', 'full_finetune', 'lp_ft',
    'gradual_unfreezing', 'chain_thaw', 'layerwise_lr_decay') with keyword `args`; or
  phases: a tuple of dicts, each a `ftjax.phases.Phase` with `trainable` given as a list of
    group names, 'all', 'head' or 'top:N' (the last N groups), and `schedule` as a dict of
    `ftjax.phases.Schedule` fields.
  lr_scale: every phase's peak LR is multiplied by it (1.0: as written), so one flag lowers the
    LRs of a preset or of explicit phases alike (`--config.plan.lr_scale=0.1`).
`config.groups` lists (name, regex) pairs; empty means the model's natural layer groups.

Parameter-efficient fine-tuning (`config.peft`):
  lora.targets: '' (no LoRA), a name in ftjax.lora.TARGETS ('query_value', 'attention',
    'all_linear') or a regex fully matching Dense module paths; lora.rank, lora.alpha (updates
    scaled by alpha / rank), lora.dropout, lora.base_qtype ('' float32; 'int8' stores the
    targeted base kernels quantised, QLoRA-style, through qwix). The adapters form the
    group 'lora'.
  group_sets: ready groups carved out of the others (ftjax.param_groups.GROUP_SETS): 'bitfit'
    (group 'biases') and 'layernorm' (group 'layer_norms').
  The carved groups sit just before the head, so `trainable='top:2'` is the head and the last
  carved group; plans name them like any group (`trainable=['lora', 'head']`).

Distillation (`config.distill`, `ftjax.compress.distill`): `teacher` names a finished workdir
  of the same task and inputs; every train step mixes its soft targets into the loss with
  `alpha` at `temperature`. The student is `model` as always; `model.keep_layers` (e.g.
  (0, 2, 4)) builds it from a subset of the source's encoder layers.

Pruning during fine-tuning (`config.prune`, `ftjax.compress.pruning`): `sparsity` > 0 (or
  `n_m`, e.g. (2, 4)) zeroes the smallest-magnitude encoder Dense kernels (`pattern`), per
  tensor or `scope='global'`, rising on Zhu & Gupta's cubic schedule from `initial_sparsity` at
  `begin` to `sparsity` at `end` (fractions of the run), masks updated every `update_every` steps.

Quantisation-aware fine-tuning (`config.qat`, `ftjax.compress.qat`): `weights='int8'` trains
  through the int8 model's forward (the Dense layers `pattern` fully matches, `activations`
  'int8' their inputs too, `embeddings` the embedding tables, a CNN's convolutions always) on
  float params; `python -m ftjax.compress --method=int8` then stores the run as int8.

Resuming a workdir with a different config is refused unless `train.resume_overrides` names
every differing key (or a parent of it, e.g. 'plan'); the change is printed and logged in
run.json and metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
from ml_collections import config_dict

from ftjax import param_groups, phases
from ftjax.compress import pruning
from ftjax.data import DataConfig
from ftjax.lora import LORA_GROUP, LORA_PARAMS, LoraError, LoraSpec
from ftjax.optim import OPTIMIZERS, OptimConfig
from ftjax.sharding import MeshConfig

__all__ = [
    "NAN_POLICIES",
    "ConfigError",
    "data_config",
    "defaults",
    "flat_keys",
    "from_file",
    "group_patterns",
    "lora_spec",
    "mesh_config",
    "optim_config",
    "plan",
    "resume_overrides",
    "select_groups",
    "validate",
]

NAN_POLICIES = ("stop", "skip")
TASK_NAMES = (
    "classification",
    "multi_label",
    "regression",
    "token_classification",
    "extractive_qa",
)
REGRESSION_LOSSES = ("mse", "huber")


class ConfigError(ValueError):
    """A config value is invalid; the message names the key."""


def from_file(path: str | os.PathLike, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of the config file at `path` (configs are files, not a package: one
    config builds on another with `from_file(Path(__file__).with_name("base.py"), arg)`)."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"ftjax_config_{path.stem}", path)
    if spec is None or not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def defaults() -> ml_collections.ConfigDict:
    """Every key a run reads, with its default."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = dict(
        source="",  # folder, installed package name, or hub id
        arch=config_dict.placeholder(str),  # None: detect from the checkpoint's config.json
        pooling="cls",  # text models: 'cls' or 'mean' (token-level tasks: the head on every token)
        dtype="float32",
        dropout=config_dict.placeholder(float),  # None: the checkpoint's rate
        dont_load=(),
        zero_init_head=False,
        keep_layers=(),  # encoder layers of the source to keep, e.g. (0, 2, 4); (): all
    )
    c.task = dict(
        name="",  # '': the task the data's labels describe; else one of TASK_NAMES
        threshold=0.5,  # multi_label: a label is predicted when its sigmoid exceeds it
        loss="mse",  # regression: 'mse' or 'huber' (on standardised targets)
        huber_delta=1.0,
        normalize_targets=True,  # regression: standardise targets with train-split mean and std
        max_answer_length=30,  # extractive_qa: longest answer span, in tokens
        n_best=20,  # extractive_qa: start/end candidates per window
    )
    c.data = {f.name: _default_of(f) for f in DataConfig.__dataclass_fields__.values()}
    c.groups = ()
    c.peft = dict(
        lora=dict(targets="", rank=8, alpha=16.0, dropout=0.0, base_qtype=""),
        group_sets=(),
    )
    c.distill = dict(
        teacher="",  # a finished ftjax workdir whose model teaches; '': no distillation
        checkpoint="best",  # the teacher's 'best' or 'final' params
        temperature=2.0,
        alpha=0.5,  # loss = (1 - alpha) * task loss + alpha * T^2 * soft loss
    )
    c.qat = dict(
        weights="",  # '' (float training) or 'int8': train through the int8 model's forward
        activations="",  # '' or 'int8': those Dense layers' inputs too, per token
        pattern=".*",  # full-match regex of the Dense module paths to quantise
        embeddings=False,  # the embedding tables too (one scale per row)
    )
    c.plan = dict(preset="", args={}, phases=(), lr_scale=1.0)
    c.optim = {
        f.name: _default_of(f)
        for f in OptimConfig.__dataclass_fields__.values()
        if f.name != "prune"  # config.prune's, which needs the run's length
    }
    # Gradual magnitude pruning of the trainable Dense kernels (ftjax.compress.pruning).
    c.prune = dict(
        sparsity=0.0,  # final fraction of the prunable weights set to 0; 0.0 (and no n_m): off
        initial_sparsity=0.0,  # the sparsity at `begin` (Zhu & Gupta's cubic ramp to `sparsity`)
        scope="tensor",  # 'tensor': each kernel at the sparsity; 'global': one threshold over all
        n_m=(),  # (N, M), e.g. (2, 4): keep N of every M inputs (fixes sparsity at 1 - N/M)
        pattern="",  # full-match regex of prunable param paths; '': the encoder's Dense kernels
        begin=0.0,  # fraction of the run where pruning starts
        end=0.75,  # fraction of the run where it reaches `sparsity` (masks fixed afterwards)
        update_every=10,  # train steps between mask updates during the ramp
    )
    c.mesh = {f.name: _default_of(f) for f in MeshConfig.__dataclass_fields__.values()}
    c.train = dict(
        batch_size=32,
        eval_batch_size=128,
        epochs=1.0,
        steps=config_dict.placeholder(int),  # overrides epochs when set
        eval_every_steps=0,  # 0: at phase ends only (see every_phase_end)
        checkpoint_every_steps=200,
        # Validate and checkpoint at every phase end too. False: at those intervals and the run's
        # last step only, so every schedule of an ablation validates at the same steps.
        every_phase_end=True,
        keep_checkpoints=2,
        best_metric="",  # '': the task's own (accuracy, micro_f1, pearson, entity f1, QA f1)
        nan_policy="stop",
        # nan_policy='skip': this many non-finite steps in a row stop the run (the LR is too high).
        max_skipped_steps=20,
        # Keys (or parents of keys, e.g. 'plan') that may differ from the workdir's config.json
        # when resuming it, e.g. ('plan.lr_scale',) to resume a diverged run with lower LRs.
        resume_overrides=(),
        label_smoothing=0.0,
        log_every_steps=10,
        # Train head-only phases on backbone features computed once (deterministic inputs only);
        # pays off when the phase is about an epoch or longer.
        cache_features=False,
        # Compile the next phase's steps on a background thread while this phase trains, at the
        # cost of the compiler's host memory beside the running step's. None: on GPU/TPU, whose
        # host cores idle during a step; off on CPU, where the compile takes the step's cores
        # (a 2-core gradual-unfreezing run was no faster with it).
        compile_ahead=config_dict.placeholder(bool),
    )
    return c


def _default_of(field) -> Any:
    """A DataConfig/OptimConfig field's default as a typed ConfigDict value."""
    default = field.default
    if default is dataclasses.MISSING:  # a required field: empty until a config sets it
        return ""
    if default is None:
        typ = {"int | None": int, "float | None": float, "str | None": str}.get(
            str(field.type), str
        )
        return config_dict.placeholder(typ)
    return default


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"config.{key}: {message}")


def flat_keys(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train.steps': value, ...} of a nested dict (an empty dict is one key)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _nullable(key: str, default: Any) -> bool:
    """Whether `key` may be None: its default is None, or its DataConfig/OptimConfig/MeshConfig
    field is typed `X | None` (e.g. data.validation_split, 'validation' unless set to None)."""
    if default is None:
        return True
    section, _, name = key.partition(".")
    fields = {"data": DataConfig, "optim": OptimConfig, "mesh": MeshConfig}.get(section)
    field = fields.__dataclass_fields__.get(name) if fields else None
    return field is not None and "None" in str(field.type)


def _check_not_none(c: ml_collections.ConfigDict) -> None:
    """A key that needs a value is not None (`--config.train.steps=None` unsets only keys that
    may be unset)."""
    now = flat_keys(c.to_dict())
    for key, default in flat_keys(defaults().to_dict()).items():
        if key in now and now[key] is None and not _nullable(key, default):
            _fail(key, f"is None; it needs a value like its default {default!r}")


def validate(c: ml_collections.ConfigDict) -> None:
    """Checks every value that can be checked without loading the model or data."""
    _check_not_none(c)
    if not c.model.source:
        _fail("model.source", "is empty; name a checkpoint folder, installed package or hub id")
    if c.model.pooling not in ("cls", "mean"):
        _fail("model.pooling", f"is {c.model.pooling!r}; use 'cls' or 'mean'")
    if c.model.dtype not in ("float32", "bfloat16", "float16"):
        _fail("model.dtype", f"is {c.model.dtype!r}; use 'float32', 'bfloat16' or 'float16'")
    if c.model.dropout is not None and not 0 <= c.model.dropout < 1:
        _fail("model.dropout", f"is {c.model.dropout}; a rate in [0, 1)")
    if not c.data.name:
        _fail(
            "data.name",
            "is empty; name a dataset ('rotten_tomatoes', 'fashion_mnist', 'csv', a TFDS name)",
        )
    for key in ("batch_size", "eval_batch_size", "keep_checkpoints", "log_every_steps"):
        if c.train[key] < 1:
            _fail(f"train.{key}", f"is {c.train[key]}; it must be >= 1")
    for key in ("eval_every_steps", "checkpoint_every_steps"):
        if c.train[key] < 0:
            _fail(
                f"train.{key}",
                f"is {c.train[key]}; it must be >= 0 (0: at phase ends, or with "
                "train.every_phase_end=False at the run's last step only)",
            )
    if c.train.steps is None and not c.train.epochs > 0:
        _fail(
            "train.epochs", f"is {c.train.epochs}; give a positive number of epochs, or train.steps"
        )
    if c.train.steps is not None and c.train.steps < 1:
        _fail("train.steps", f"is {c.train.steps}; it must be >= 1")
    if isinstance(c.train.max_skipped_steps, bool) or c.train.max_skipped_steps < 1:
        _fail("train.max_skipped_steps", f"is {c.train.max_skipped_steps}; it must be >= 1")
    _validate_resume_overrides(c)
    _validate_task(c.task)
    if c.train.nan_policy not in NAN_POLICIES:
        _fail("train.nan_policy", f"is {c.train.nan_policy!r}; use one of {list(NAN_POLICIES)}")
    if not 0 <= c.train.label_smoothing < 1:
        _fail("train.label_smoothing", f"is {c.train.label_smoothing}; use a value in [0, 1)")
    if c.optim.name not in OPTIMIZERS:
        _fail("optim.name", f"is {c.optim.name!r}; use one of {list(OPTIMIZERS)}")
    _validate_plan(c.plan)
    _validate_groups(c.groups)
    pruning.validate_config(c.prune, _fail)
    _validate_peft(c.peft)
    _validate_distill(c)
    _validate_qat(c)
    _validate_pack(c)


def _validate_pack(c: ml_collections.ConfigDict) -> None:
    if not c.data.pack:
        return
    if c.train.cache_features:
        _fail(
            "train.cache_features",
            "is True with data.pack set: the feature cache stores one row per batch row, not "
            "per packed example; leave one of them off",
        )
    if c.distill.teacher:
        _fail(
            "distill.teacher",
            "is set with data.pack: the teacher reads unpacked batches; leave data.pack False "
            "when distilling",
        )


def _validate_qat(c: ml_collections.ConfigDict) -> None:
    from ftjax.compress.quantize import QTYPES, QuantizeError, QuantSpec  # it reads runs: cycle

    q = c.qat
    for key in ("weights", "activations"):
        if q[key] not in ("", *QTYPES):
            _fail(f"qat.{key}", f"is {q[key]!r}; use '' (float) or one of {list(QTYPES)}")
    if not q.weights:
        if q.activations or q.embeddings:
            _fail(
                "qat.weights",
                "is '' (no QAT) while qat.activations or qat.embeddings is set; "
                "set qat.weights='int8'",
            )
        return
    try:
        QuantSpec(q.weights, q.activations or None, q.pattern)
    except QuantizeError as e:
        _fail("qat.pattern", str(e))
    if c.peft.lora.targets:
        _fail(
            "qat.weights",
            "is set with peft.lora.targets: QAT trains the plain model's "
            "weights; leave one of them empty (a LoRA base is int8 with base_qtype='int8')",
        )
    if c.train.cache_features:
        _fail(
            "train.cache_features",
            "is True with qat.weights set: a cached head would train "
            "outside the int8 forward; leave cache_features False for QAT",
        )


def _validate_distill(c: ml_collections.ConfigDict) -> None:
    d = c.distill
    if any(isinstance(i, bool) or not isinstance(i, int) for i in c.model.keep_layers):
        _fail(
            "model.keep_layers", f"is {c.model.keep_layers!r}; give layer indices, e.g. (0, 2, 4)"
        )
    if not d.teacher:
        return
    if d.checkpoint not in ("best", "final"):
        _fail("distill.checkpoint", f"is {d.checkpoint!r}; use 'best' or 'final'")
    if not d.temperature > 0:
        _fail("distill.temperature", f"is {d.temperature}; it must be > 0 (1: plain softmax)")
    if not 0 <= d.alpha <= 1:
        _fail("distill.alpha", f"is {d.alpha}; the soft loss's weight, in [0, 1]")
    if c.train.cache_features:
        _fail(
            "train.cache_features",
            "is True with distill.teacher set: cached head phases would skip the teacher; "
            "leave cache_features False when distilling",
        )


def _validate_peft(p: ml_collections.ConfigDict) -> None:
    unknown = [g for g in p.group_sets if g not in param_groups.GROUP_SETS]
    if unknown:
        _fail(
            "peft.group_sets",
            f"has {unknown}; use names from {sorted(param_groups.GROUP_SETS)}",
        )
    if p.lora.targets:
        try:
            lora_spec(p)
        except LoraError as e:
            _fail("peft.lora", str(e))


def lora_spec(p: ml_collections.ConfigDict) -> LoraSpec | None:
    """The run's LoRA settings (`config.peft`), None without LoRA."""
    if not p.lora.targets:
        return None
    lo = p.lora
    return LoraSpec(lo.targets, lo.rank, float(lo.alpha), float(lo.dropout), lo.base_qtype)


def group_patterns(c: ml_collections.ConfigDict, natural: Sequence[tuple[str, str]]) -> list:
    """The run's (name, regex) groups: `config.groups` or the model's natural groups, with the
    peft group sets and the LoRA group carved out of them."""
    patterns = [tuple(g) for g in c.groups] or list(natural)
    for name in c.peft.group_sets:
        patterns = param_groups.carve(patterns, *param_groups.GROUP_SETS[name])
    if c.peft.lora.targets:
        patterns = param_groups.carve(patterns, LORA_GROUP, LORA_PARAMS)
    return patterns


def _validate_task(t: ml_collections.ConfigDict) -> None:
    if t.name and t.name not in TASK_NAMES:
        _fail("task.name", f"is {t.name!r}; use one of {list(TASK_NAMES)} or '' (from the data)")
    if not 0 < t.threshold < 1:
        _fail("task.threshold", f"is {t.threshold}; a probability in (0, 1)")
    if t.loss not in REGRESSION_LOSSES:
        _fail("task.loss", f"is {t.loss!r}; use one of {list(REGRESSION_LOSSES)}")
    if not t.huber_delta > 0:
        _fail("task.huber_delta", f"is {t.huber_delta}; it must be > 0")
    for key in ("max_answer_length", "n_best"):
        if t[key] < 1:
            _fail(f"task.{key}", f"is {t[key]}; it must be >= 1")


def _validate_resume_overrides(c: ml_collections.ConfigDict) -> None:
    keys = flat_keys(c.to_dict())
    for entry in c.train.resume_overrides:
        if not isinstance(entry, str) or not entry.strip():
            _fail("train.resume_overrides", f"holds {entry!r}; list config keys as strings")
    for entry in resume_overrides(c):
        if entry not in keys and not any(k.startswith(entry + ".") for k in keys):
            _fail(
                "train.resume_overrides",
                f"names {entry!r}, which is not a config key; name keys like 'plan.lr_scale' or "
                "'optim.clip_norm' (see ftjax/config.py defaults())",
            )


def resume_overrides(c: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The keys `train.resume_overrides` names (a 'a,b' string entry counts as two)."""
    return tuple(
        k.strip() for e in c.train.resume_overrides for k in str(e).split(",") if k.strip()
    )


def _wrong_type(key: str, value: Any, hint: Any) -> None:
    """A ConfigError naming `key` if `value` does not fit the annotation `hint` (numbers, strings,
    booleans and their optional forms; other annotations are left to the code that uses them)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return
        if len(options) != 1:
            return
        hint = options[0]
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    checks = {
        float: (is_number, "a number"),
        int: (is_number and float(value).is_integer(), "a whole number"),
        bool: (isinstance(value, bool), "True or False"),
        str: (isinstance(value, str), "a string"),
    }
    if hint not in checks or checks[hint][0]:
        return
    want = checks[hint][1]
    hint_text = ""
    if isinstance(value, str) and hint in (int, float):
        try:
            float(value)
            hint_text = f" (write {value} without quotes)"
        except ValueError:
            pass
    _fail(key, f"is {value!r} (a {type(value).__name__}); it must be {want}{hint_text}")


def _validate_types(plan: ml_collections.ConfigDict) -> None:
    """Preset arguments and phase values have the types their dataclass or function declares."""
    if plan.preset in phases.PRESETS:
        hints = typing.get_type_hints(phases.PRESETS[plan.preset])
        for name, value in plan.args.to_dict().items():
            if name in hints:
                _wrong_type(f"plan.args.{name}", value, hints[name])
    phase_hints = typing.get_type_hints(phases.Phase)
    schedule_hints = typing.get_type_hints(phases.Schedule)
    for i, p in enumerate(plan.phases):
        for name, value in dict(p).items():
            key = f"plan.phases[{i}].{name}"
            if name == "schedule" and isinstance(value, dict):
                for s_name, s_value in value.items():
                    if s_name in schedule_hints:
                        _wrong_type(f"{key}.{s_name}", s_value, schedule_hints[s_name])
            elif name == "lr_mults" and isinstance(value, dict):
                for group, mult in value.items():
                    _wrong_type(f"{key}[{group!r}]", mult, float)
            elif name in phase_hints:
                _wrong_type(key, value, phase_hints[name])


def _validate_plan(plan: ml_collections.ConfigDict) -> None:
    _wrong_type("plan.lr_scale", plan.lr_scale, float)
    if not (math.isfinite(plan.lr_scale) and plan.lr_scale > 0):
        _fail(
            "plan.lr_scale", f"is {plan.lr_scale}; a positive factor (1.0 keeps the LRs as written)"
        )
    if bool(plan.preset) == bool(plan.phases):
        _fail(
            "plan",
            "set exactly one of plan.preset (a recipe name) or plan.phases (explicit phases)",
        )
    if plan.preset and plan.preset not in phases.PRESETS:
        _fail("plan.preset", f"is {plan.preset!r}; use one of {sorted(phases.PRESETS)}")
    known = set(phases.Phase.__dataclass_fields__)
    for i, p in enumerate(plan.phases):
        unknown = set(p) - known
        if unknown:
            _fail(
                f"plan.phases[{i}]",
                f"has unknown keys {sorted(unknown)}; phase keys are {sorted(known)}",
            )
        if "schedule" in p and set(p["schedule"]) - set(phases.Schedule.__dataclass_fields__):
            bad = sorted(set(p["schedule"]) - set(phases.Schedule.__dataclass_fields__))
            _fail(f"plan.phases[{i}].schedule", f"has unknown keys {bad}")
    _validate_types(plan)


def _validate_groups(groups: Sequence[Any]) -> None:
    for i, g in enumerate(groups):
        if not (
            isinstance(g, (tuple, list)) and len(g) == 2 and all(isinstance(x, str) for x in g)
        ):
            _fail(f"groups[{i}]", f"is {g!r}; each group is a (name, regex) pair of strings")


# ----------------------------------------------------------------------------- engine objects


def data_config(c: ml_collections.ConfigDict) -> DataConfig:
    values = c.data.to_dict()
    values["length_buckets"] = tuple(values["length_buckets"])
    return DataConfig(**values)


def optim_config(c: ml_collections.ConfigDict, total_steps: int | None = None) -> OptimConfig:
    """`config.optim`, with `config.prune`'s schedule over a run of `total_steps` when given."""
    prune = pruning.from_config(c.prune, total_steps) if total_steps else None
    return OptimConfig(**c.optim.to_dict(), prune=prune)


def mesh_config(c: ml_collections.ConfigDict) -> MeshConfig:
    return MeshConfig(**c.mesh.to_dict())


def plan(c: ml_collections.ConfigDict, group_names: Sequence[str]) -> phases.Plan:
    """The config's plan over `group_names` (depth order, head last), LRs times plan.lr_scale."""
    if c.plan.preset:
        try:
            result = phases.preset(c.plan.preset, group_names, **c.plan.args.to_dict())
        except TypeError as e:
            raise ConfigError(
                f"config.plan.args: {e}; see ftjax.phases.{c.plan.preset} for its arguments"
            ) from e
    else:
        result = phases.Plan(
            tuple(_phase(i, dict(p), group_names) for i, p in enumerate(c.plan.phases))
        )
    if c.plan.lr_scale != 1.0:
        result = phases.Plan(
            tuple(dataclasses.replace(p, lr=p.lr * c.plan.lr_scale) for p in result.phases)
        )
    return result


def _phase(i: int, p: dict[str, Any], names: Sequence[str]) -> phases.Phase:
    p["trainable"] = select_groups(p.get("trainable", ()), names, key=f"plan.phases[{i}].trainable")
    if "schedule" in p:
        p["schedule"] = phases.Schedule(**dict(p["schedule"]))
    if "lr_mults" in p:
        p["lr_mults"] = dict(p["lr_mults"])
    p.setdefault("name", f"phase_{i}")
    return phases.Phase(**p)


def select_groups(spec: Any, names: Sequence[str], *, key: str) -> tuple[str, ...]:
    """Group names from 'all', 'head', 'top:N' or an explicit list."""
    names = tuple(names)
    if isinstance(spec, str):
        if spec == "all":
            return names
        if spec == "head":
            return names[-1:]
        if spec.startswith("top:") and spec[4:].isdigit() and 0 < int(spec[4:]) <= len(names):
            return names[-int(spec[4:]) :]
        _fail(
            key,
            f"is {spec!r}; use 'all', 'head', 'top:N' with 1 <= N <= {len(names)}, or a list of {list(names)}",
        )
    return tuple(spec)
