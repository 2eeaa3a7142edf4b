"""The task's metrics of a finished run's checkpoint on a new labelled split, kept beside the run.

    python -m ftjax.evaluate --workdir=W --data.path=PATH [--data.name=csv|conll|squad|image_folder]
        [--data.split=test] [--checkpoint=best|final] [--name=NAME] [--overwrite]
        [--batch_size=N] [--data.KEY=VALUE ...]
    python -m ftjax.evaluate --workdir=W --data.name=rotten_tomatoes --data.split=test

writes `W/evaluations/<name>.json` ({"name", "checkpoint", "step", "task", "data": {"name",
"path", "split"}, "label_names", "metrics"}) and prints the metrics. The name defaults to a slug of
the data's file (or dataset) name, the split and the checkpoint; an existing evaluation is not
overwritten without --overwrite. Nothing else in the workdir is written (config.json,
results.json, metrics.jsonl and the checkpoints stay as they are).

The data are read as the run read its own: the run's data settings (config.json's `data`: column
names, max_length, length buckets, image size) with the command line's `--data.KEY` on top.
A file or folder (`data.path`; its kind from `data.name`, by default the one the run's task reads:
CSV/TSV/JSONL, CoNLL, SQuAD JSON or an image folder) is evaluated whole, never split; a packaged
or TFDS dataset (`data.name`) gives its `data.split` ('train', 'validation' or 'test', as the
run's data settings map them, e.g. `data.test_split`). Labels are read in the run's label space:
class names, multi-label names and tags map by name onto the run's `label_names`, whatever their
order or number in the new data, and a label the run never saw is an error naming it. Regression
targets are in their original units; the run's target normalisation applies.

The metrics are the task's own, computed as training computes them (`ftjax.steps.eval_step_fn`
through `ftjax.phase_steps.evaluate_with`, compiled with the model's compiler options, batches of
the run's `train.eval_batch_size` by default), so the run's own test split gives its
results.json test metrics exactly.

Not here: unlabelled predictions (`ftjax.predict`), loading the run (`ftjax.inference`), reading
data (`ftjax.data`), the metrics themselves (`ftjax.tasks`).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from ftjax import inference, sharding  # noqa: E402
from ftjax.compile import StepCache  # noqa: E402
from ftjax.data import DataConfig, DatasetSplits, Split, build_splits, labels, load_records  # noqa: E402
from ftjax.data.conll import read_conll  # noqa: E402
from ftjax.data.records import RecordView  # noqa: E402
from ftjax.data.squad import read_squad  # noqa: E402
from ftjax.data.user import read_image_folder, read_text_file  # noqa: E402
from ftjax.inference import Run  # noqa: E402
from ftjax.phase_steps import evaluate_with  # noqa: E402
from ftjax.steps import eval_step_fn  # noqa: E402
from ftjax.tasks import Task  # noqa: E402

__all__ = [
    "EVALUATIONS",
    "SPLITS",
    "data_config",
    "evaluate_run",
    "evaluation_name",
    "evaluation_path",
    "read_split",
    "run_evaluation",
    "cli",
]

EVALUATIONS = "evaluations"  # the folder under the workdir
SPLITS = ("train", "validation", "test")
# The tasks each kind of labelled file serves (as ftjax.data.user reads them).
_FILE_TASKS = {
    "csv": ("classification", "multi_label", "regression"),
    "image_folder": ("classification",),
    "conll": ("token_classification",),
    "squad": ("extractive_qa",),
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# ----------------------------------------------------------------------------- the data settings


def _saved(run: Run) -> dict[str, Any]:
    """The run's config.json (empty when it has none)."""
    path = run.workdir / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _file_kind(run: Run) -> str:
    """The kind of labelled file the run's task reads."""
    if run.kind == "image":
        return "image_folder"
    return {"token_classification": "conll", "extractive_qa": "squad"}.get(run.task.name, "csv")


def data_config(run: Run, overrides: Mapping[str, Any]) -> tuple[DataConfig, str]:
    """The DataConfig the new split is read with, and the split's name: the run's data settings,
    without its own files and example caps, under `overrides` (`data.KEY` values; 'split' too)."""
    overrides = dict(overrides)
    split = overrides.pop("split", "test")
    fields = DataConfig.__dataclass_fields__
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown data keys {unknown}; DataConfig has {sorted(fields)}")
    values = {k: v for k, v in _saved(run).get("data", {}).items() if k in fields}
    values.update({k: run.record["data"][k] for k in run.record["data"] if k in fields})
    for key in ("path", "validation_path", "test_path", "train_examples", "eval_examples"):
        values[key] = None  # the run's own files and caps are not this evaluation's
    if "path" in overrides and "name" not in overrides:
        values["name"] = _file_kind(run)
    elif "name" not in overrides:
        raise ValueError(
            "say what to evaluate on: --data.path=FILE (a labelled file or folder like the "
            "run's) or --data.name=DATASET (a packaged or TFDS dataset, with --data.split)"
        )
    values.update(overrides)
    if values["name"] in _FILE_TASKS and not values["path"]:
        raise ValueError(f"data.name={values['name']!r} reads a file: give --data.path")
    if values["name"] not in _FILE_TASKS and split not in SPLITS:
        raise ValueError(f"data.split is {split!r}; use one of {list(SPLITS)}")
    values["length_buckets"] = tuple(values.get("length_buckets") or ())
    values["pack"] = False  # the finished model reads padded batches; packing sped training only
    return DataConfig(**values), split


# ----------------------------------------------------------------------------- labels


def _index(names: Sequence[str], seen: Sequence[str], source: str, what: str) -> dict[str, int]:
    """Name -> the run's id; a name the run does not have is an error naming it."""
    unseen = sorted(set(seen) - set(names))
    if unseen:
        raise ValueError(
            f"{source}: {what} {unseen} are not among the run's {what} {list(names)}; the model "
            f"never learned them: drop those rows, or rename them to the run's {what}"
        )
    return {n: i for i, n in enumerate(names)}


def _file_rows(config: DataConfig, task: Task) -> list[dict[str, Any]]:
    """A labelled file's records with their labels in the run's label space."""
    path, names, name = config.path, task.label_names, task.name
    if config.name == "squad":
        return read_squad(path)
    if config.name == "image_folder":
        files = read_image_folder(path)
        index = _index(names, [y for _, y in files], path, "classes")
        return [{"image": f, "label": np.int64(index[y])} for f, y in files]
    if config.name == "conll":
        sentences = read_conll(path)
        index = _index(names, [t for _, tags in sentences for t in tags], path, "tags")
        return [
            {"text": w, "label": np.asarray([index[t] for t in tags], np.int32)}
            for w, tags in sentences
        ]
    rows = read_text_file(path, config.text_key, config.label_key, config.text_pair_key)
    keep = lambda r, label: (
        {k: v for k, v in r.items() if k not in ("line", "label")} | {"label": label}
    )
    if name == "regression":
        where = lambda r: f"{path}, line {r['line']}"
        return [keep(r, np.float32(labels.parse_number(r["label"], where(r)))) for r in rows]
    if name == "multi_label":
        parsed = [labels.parse_multi_label(r["label"], config.label_separator) for r in rows]
        index = _index(names, [n for p in parsed for n in p], path, "labels")
        return [keep(r, labels.multi_hot(p, index)) for r, p in zip(rows, parsed)]
    classes = [str(r["label"]).strip() for r in rows]
    index = _index(names, classes, path, "labels")
    return [keep(r, np.int64(index[c])) for r, c in zip(rows, classes)]


def _relabel(view: RecordView, data_names: Sequence[str], task: Task, source: str) -> RecordView:
    """A dataset's records with label ids of its own names moved to the run's ids by name."""
    names = list(task.label_names)
    if (
        not data_names
        or list(data_names) == names
        or task.name
        not in (
            "classification",
            "multi_label",
            "token_classification",
        )
    ):
        return view
    what = "tags" if task.name == "token_classification" else "labels"
    index = _index(names, data_names, source, what)
    to_run = np.asarray([index[n] for n in data_names])

    def convert(record: dict[str, Any]) -> dict[str, Any]:
        label = np.asarray(record["label"])
        if task.name == "multi_label":  # a multi-hot vector over the data's names
            moved = np.zeros(len(names), label.dtype)
            moved[to_run] = label
            return {**record, "label": moved}
        return {**record, "label": to_run[label].astype(label.dtype)}

    return RecordView(view, {k: k for k in view[0]}, convert=convert)


def _check_kind(run: Run, config: DataConfig, kind: str) -> None:
    if kind != run.kind:
        source = f"data.name={config.name!r}" + (f" ({config.path})" if config.path else "")
        raise ValueError(
            f"the run's model reads {run.kind}s but {source} holds {kind}s: evaluate it on "
            f"{run.kind} data like the run's"
        )


def read_split(config: DataConfig, split: str, task: Task) -> DatasetSplits:
    """The one split to evaluate, {split: records}, labels in `task`'s label space."""
    if config.name in _FILE_TASKS:
        if task.name not in _FILE_TASKS[config.name]:
            raise ValueError(
                f"the run is a {task.name} run, and data.name={config.name!r} files hold "
                f"{' or '.join(_FILE_TASKS[config.name])} data; use data.name="
                + repr(next(k for k, v in _FILE_TASKS.items() if task.name in v))
            )
        rows = _file_rows(config, task)
        if not rows:
            raise ValueError(f"{config.path} has no examples")
        kind = "image" if config.name == "image_folder" else "text"
        return DatasetSplits(
            {split: RecordView(rows, {k: k for k in rows[0]})}, kind, [], task.name
        )
    data = load_records(config, task.name)
    if data.task != task.name:
        raise ValueError(
            f"data.name={config.name!r} holds {data.task} data, but the run is a {task.name} run"
        )
    view = _relabel(data.splits[split], data.class_names, task, f"data.name={config.name!r}")
    return DatasetSplits({split: view}, data.kind, [], task.name)


# ----------------------------------------------------------------------------- evaluation


def _eval_step(run: Run, mesh: jax.sharding.Mesh) -> Callable[[Mapping[str, Any]], Any]:
    """The run's eval step on `mesh` as training runs it (`PhaseSteps.eval_step`): jitted with
    replicated outputs, compiled once per batch shape with the model's compiler options."""
    rep = sharding.replicated(mesh)
    params, state = jax.device_put((run.params, run.model_state), rep)
    jitted = jax.jit(eval_step_fn(run.model, run.task), out_shardings=rep)
    cache = StepCache(run.model.cpu_compiler_options)

    def step(batch: Mapping[str, Any]):
        batch = sharding.shard_batch(batch, mesh)
        key = tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))
        if key not in cache:
            cache.compile(key, lambda: jitted.lower(params, state, batch), mesh)
        return cache[key](params, state, batch)

    return step


def evaluate_run(run: Run, split: Split, batch_size: int) -> dict[str, float]:
    """The task's metrics of `run` over every example of `split` once, on all devices."""
    mesh = sharding.make_mesh()
    n = mesh.devices.size
    batch_size = -(-batch_size // n) * n  # batches split evenly over the devices
    return evaluate_with(
        _eval_step(run, mesh), run.task, split.eval_batches(batch_size), split.references
    )


# ----------------------------------------------------------------------------- the record


def evaluation_name(config: DataConfig, split: str, checkpoint: str) -> str:
    """A file-name slug of the data's file (or dataset) name, the split and the checkpoint."""
    base = Path(config.path).stem if config.path else config.name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{base}-{split}-{checkpoint}").strip("-.")
    return slug or f"{split}-{checkpoint}"


def evaluation_path(workdir: str | os.PathLike, name: str, overwrite: bool = False) -> Path:
    """Where evaluation `name` goes; an existing one is an error unless `overwrite`."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"--name={name!r}: use letters, digits, '_', '.' and '-' (starting with a letter or "
            "digit)"
        )
    path = Path(workdir) / EVALUATIONS / f"{name}.json"
    if path.exists() and not overwrite:
        raise ValueError(
            f"{path} exists; pass --overwrite to replace it, or --name=NAME to keep both"
        )
    return path


def _write(path: Path, content: Mapping[str, Any]) -> None:
    """The evaluation as a whole file or not at all (a temporary file renamed)."""
    path.parent.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(content, indent=2) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_evaluation(
    workdir: str | os.PathLike,
    data: Mapping[str, Any],
    *,
    checkpoint: str = "best",
    name: str | None = None,
    overwrite: bool = False,
    batch_size: int | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Evaluates `workdir`'s `checkpoint` on the split `data` describes (`data.KEY` overrides of
    the run's data settings, 'split' included) and writes it; returns (its path, its content)."""
    run = inference.load_run(workdir, checkpoint, finished=True)
    config, split = data_config(run, data)
    name = name or evaluation_name(config, split, checkpoint)
    path = evaluation_path(run.workdir, name, overwrite)  # refused before any work
    if config.name in _FILE_TASKS:  # known before the files are read
        _check_kind(run, config, "image" if config.name == "image_folder" else "text")
    records = read_split(config, split, run.task)
    _check_kind(run, config, records.kind)
    splits = build_splits(config, run.preprocessing, run.task, records=records)
    size = batch_size or _saved(run).get("train", {}).get("eval_batch_size") or 128
    metrics = evaluate_run(run, splits[split], size)
    content = {
        "name": name,
        "checkpoint": run.checkpoint,
        "step": run.step,
        "task": run.task.name,
        "data": {
            "name": config.name,
            "path": str(Path(config.path).absolute()) if config.path else None,
            "split": split,
        },
        "label_names": list(run.task.label_names),
        "metrics": metrics,
    }
    _write(evaluation_path(run.workdir, name, overwrite), content)
    return path, content


# ----------------------------------------------------------------------------- command line


def _data_flags() -> ml_collections.ConfigDict:
    from ftjax.config import defaults

    data = defaults().data
    with data.unlocked():
        data.split = "test"
    return data


def _define_flags() -> None:
    # Defined by the command only: tests import this module and ftjax.predict side by side.
    from ml_collections import config_flags

    flags.DEFINE_string("workdir", None, "the workdir of a finished run")
    flags.DEFINE_enum(
        "checkpoint", "best", list(inference.CHECKPOINTS), "best validation step, or final"
    )
    flags.DEFINE_string("name", None, "the evaluation's name (default: data, split, checkpoint)")
    flags.DEFINE_bool("overwrite", False, "replace an existing evaluation of that name")
    flags.DEFINE_integer(
        "batch_size", None, "examples per batch (default: the run's train.eval_batch_size)"
    )
    config_flags.DEFINE_config_dict(
        "data", _data_flags(), "the data to evaluate on: --data.KEY=VALUE over the run's"
    )
    flags.mark_flags_as_required(["workdir"])


def _print(path: Path, content: Mapping[str, Any]) -> None:
    d = content["data"]
    print(
        f"{content['name']}: {content['checkpoint']} checkpoint (step {content['step']}) of "
        f"{content['task']} on {d['path'] or d['name']} ({d['split']})"
    )
    for key, value in content["metrics"].items():
        print(f"  {key} {value:.4f}" if isinstance(value, float) else f"  {key} {value}")
    print(f"written to {path}", flush=True)


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; data settings go in --data.KEY")
    from ml_collections import config_flags

    from ftjax import compile as compile_lib

    compile_lib.own_process()  # every jitted function in this process is ftjax's
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    f = flags.FLAGS
    overridden = config_flags.get_override_values(f["data"])
    data = {key: f.data[key] for key in overridden}
    try:
        path, content = run_evaluation(
            f.workdir,
            data,
            checkpoint=f.checkpoint,
            name=f.name,
            overwrite=f.overwrite,
            batch_size=f.batch_size,
        )
    except (ValueError, OSError) as e:  # InferenceError and the data's errors are ValueErrors
        sys.exit(f"FATAL: {e}")
    _print(path, content)


def _bad_flag(error: Exception, argv: list[str]) -> None:
    """Exits with one line: an unknown `--data.KEY` named as such (ml_collections raises a bare
    AttributeError or KeyError), or absl's message for a bad value."""
    if isinstance(error, flags.Error):
        sys.exit(f"FATAL: {error}")
    name = str(error).strip("\"'")
    keys = [a.split("=", 1)[0].removeprefix("--") for a in argv[1:] if a.startswith("--data.")]
    bad = [k for k in keys if k.split(".")[-1] == name] or keys
    sys.exit(
        f"FATAL: unknown data key {', '.join(bad)}; the keys are split and those of "
        f"ftjax.data.DataConfig: {sorted(DataConfig.__dataclass_fields__)}"
    )


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, flags.Error) as e:
        _bad_flag(e, argv)


def cli() -> None:
    try:  # config_flags reads the --data.KEY overrides from sys.argv as the flag is defined
        _define_flags()
    except (AttributeError, KeyError, flags.Error) as e:
        _bad_flag(e, sys.argv)
    app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
    cli()
