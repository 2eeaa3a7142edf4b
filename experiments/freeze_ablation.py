"""Which freeze/unfreeze schedule works best? The ULMFiT-style ablation sweep, one command.

    python experiments/freeze_ablation.py --dry-run        # every run's phase plan + plans/*.png, no training
    python experiments/freeze_ablation.py                  # the real sweep (--size real): 10 schedules x 3 seeds
    python experiments/freeze_ablation.py --quick          # the whole sweep end to end on a tiny model, minutes

The base config (default configs/minilm_rotten_tomatoes.py) gives the model, data and optimizer;
each schedule replaces its phase plan (the from-scratch baseline also keeps every parameter
freshly initialised); a run size (--size) sizes the runs. Runs go to SWEEP/<schedule>/seed_<k>, one
`python -m ftjax.main` subprocess each (--workers at once); rerunning the same command skips
finished runs and resumes interrupted ones from their checkpoints. Outputs in SWEEP: results.csv,
results.md, val_curves.png, test_accuracy.png, plans/<schedule>.png and plans.txt.

The schedules (Howard & Ruder 2018, Table 7, plus LP-FT and chain-thaw) are in SCHEDULES; their
learning rates come from --head-lr (head-only phases), --ft-lr (every group at one LR) and
--discr-lr with --factor (discriminative: the head at --discr-lr, each lower group --factor times
lower), so a schedule's LRs can be changed without editing code. See experiments/README.md.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sweep
import sweep_plans
import sweep_report

REPO = sweep.REPO
DEFAULT_BASE = REPO / "configs" / "minilm_rotten_tomatoes.py"


# ----------------------------------------------------------------------------- schedules


@dataclasses.dataclass(frozen=True)
class LRs:
    head: float = 2e-3  # head-only phases (linear probe, LP-FT's probe, chain-thaw's first phase)
    # One LR for every trainable group (full, gradual, chain-thaw, LP-FT's fine-tuning).
    ft: float = 1e-4
    discr: float = 1e-3  # discriminative: the head's LR; each lower group `factor` times lower
    factor: float = 2.6  # ULMFiT's divisor per group
    lora: float = 1e-3  # LoRA phases (adapters and head)


@dataclasses.dataclass(frozen=True)
class FreezeSchedule:
    name: str
    description: str
    overrides: Callable[[Sequence[str], LRs], dict[str, Any]]  # (group names, LRs) -> overrides


def _preset(name: str, **args: Any) -> dict[str, Any]:
    return {"plan.phases": (), "plan.preset": name, "plan.args": args}


def _phases(*phases: dict[str, Any]) -> dict[str, Any]:
    return {"plan.preset": "", "plan.args": {}, "plan.phases": tuple(phases)}


def _lora(rank: int, lr: float, base_qtype: str = "") -> dict[str, Any]:
    """LoRA (rank `rank`, alpha 2 x rank, every Dense of the encoder layers; `base_qtype` 'int8'
    stores their kernels quantised) trained with the head for the whole run, the base frozen; 10%
    warmup then cosine, like 'full'."""
    phase = dict(
        name="lora",
        trainable=["lora", "head"],
        lr=lr,
        schedule=dict(kind="warmup_cosine", warmup_fraction=0.1),
    )
    return {
        **_phases(phase),
        "peft.lora.targets": "all_linear",
        "peft.lora.rank": rank,
        "peft.lora.alpha": 2.0 * rank,
        "peft.lora.base_qtype": base_qtype,
    }


def _gradual(
    groups: Sequence[str], lr: float, schedule: dict[str, Any], decay: float | None
) -> dict[str, Any]:
    """ULMFiT gradual unfreezing: one more group per phase from the top, equal phases, the last takes the rest."""
    n = len(groups)
    phases = []
    for k in range(1, n + 1):
        p = dict(name=f"top_{k}", trainable=f"top:{k}", lr=lr, schedule=schedule)
        if k < n:
            p["fraction"] = 1.0 / n
        if decay is not None:
            p["layerwise_decay"] = decay
        phases.append(p)
    return _phases(*phases)


# Head-only phases of an epoch or more train on backbone features computed once (a speed-up only:
# frozen layers run in inference mode either way). Short head phases (gradual, chain-thaw) do not pay.
# The cache stores one row per example, so it reads unpacked batches.
CACHED = {"train.cache_features": True, "data.pack": False}
CONSTANT = {"kind": "constant"}
STLR = {"kind": "stlr", "cut_frac": 0.1, "ratio": 32.0}

SCHEDULES: dict[str, FreezeSchedule] = {
    s.name: s
    for s in (
        FreezeSchedule(
            "linear_probe",
            "last layer only (ULMFiT 'Last'): the new head on frozen features, constant head LR",
            lambda g, lr: {**_preset("linear_probe", lr=lr.head), **CACHED},
        ),
        FreezeSchedule(
            "full",
            "full fine-tuning: every group at one LR, 10% warmup then cosine",
            lambda g, lr: _preset("full_finetune", lr=lr.ft),
        ),
        FreezeSchedule(
            "full_discr",
            "full fine-tuning with discriminative LRs (head at the discr LR, each lower group / factor), "
            "10% warmup then cosine",
            lambda g, lr: _preset("layerwise_lr_decay", lr=lr.discr, decay=1 / lr.factor),
        ),
        FreezeSchedule(
            "chain_thaw",
            "chain-thaw (Felbo et al. 2017): the head, then each group alone from the input side, "
            "then all; equal phases, constant LR",
            lambda g, lr: _preset("chain_thaw", lr=lr.ft, head_lr=lr.head),
        ),
        FreezeSchedule(
            "gradual",
            "gradual unfreezing: one more group per phase from the top, one constant LR for all",
            lambda g, lr: _gradual(g, lr.ft, CONSTANT, None),
        ),
        FreezeSchedule(
            "gradual_discr",
            "gradual unfreezing + discriminative LRs, constant within a phase",
            lambda g, lr: _gradual(g, lr.discr, CONSTANT, 1 / lr.factor),
        ),
        FreezeSchedule(
            "gradual_stlr",
            "gradual unfreezing + slanted triangular LR in every phase, one LR for all groups",
            lambda g, lr: _gradual(g, lr.ft, STLR, None),
        ),
        FreezeSchedule(
            "gradual_discr_stlr",
            "ULMFiT: gradual unfreezing + discriminative LRs + slanted triangular LR "
            "(ftjax's gradual_unfreezing preset)",
            lambda g, lr: _preset("gradual_unfreezing", lr=lr.discr, factor=lr.factor),
        ),
        FreezeSchedule(
            "lp_ft",
            "LP-FT (Kumar et al. 2022): the head alone for half the run at the head LR, then every group "
            "at one LR with warmup and cosine",
            lambda g, lr: {**_preset("lp_ft", lr=lr.ft, head_lr=lr.head), **CACHED},
        ),
        *(
            FreezeSchedule(
                f"lora_r{rank}",
                f"LoRA rank {rank} (alpha {2 * rank}) on every Dense of the encoder layers, with "
                "the head, base frozen; one LR (--lora-lr), 10% warmup then cosine",
                lambda g, lr, rank=rank: _lora(rank, lr.lora),
            )
            for rank in (4, 8, 16)
        ),
        FreezeSchedule(
            "qlora_r16",
            "lora_r16 on an int8 base (QLoRA-style: the adapted kernels stored int8 by qwix)",
            lambda g, lr: _lora(16, lr.lora, "int8"),
        ),
        FreezeSchedule(
            "scratch",
            "from scratch: the same architecture with every parameter randomly initialised, trained like "
            "'full'",
            lambda g, lr: {**_preset("full_finetune", lr=lr.ft), "model.dont_load": (".*",)},
        ),
    )
}


# ----------------------------------------------------------------------------- run sizes

RUN_SIZES: dict[str, dict[str, Any]] = {
    # MiniLM on Rotten Tomatoes, 10 schedules x 3 seeds on 2 cores with --workers 2: 98 min measured
    # on a quiet machine with an empty compilation cache (two epochs took 132 min on a busy one).
    "real": {
        "data.train_examples": 2048,  # a fixed subset: the first 2,048 of the (shuffled) train split
        "data.max_length": 48,  # covers 97% of the snippets untruncated
        # Batches of similar lengths padded to 16, 32 or 48 tokens: ~30% less compute than padding
        # every batch to 48, for two more compiled shapes per phase (compiled two at a time, and
        # cached for the other seeds).
        "data.pack": False,
        "data.length_buckets": (16, 32),
        "data.group_by_length": 16,
        "train.batch_size": 32,
        "train.epochs": 1.5,  # 96 steps, 3,072 examples
        "train.steps": None,
        "train.eval_every_steps": 32,  # plus every phase end
        "train.checkpoint_every_steps": 64,
        "train.keep_checkpoints": 1,
        # The published sweep ran with the checkpoint's dropout (0.1) and plain cross-entropy; pinned
        # so that retuning the base config's own recipe does not move the sweep.
        "model.dropout": 0.1,
        "train.label_smoothing": 0.0,
    },
    # Every schedule end to end in minutes: a 1-layer cut of the model, a few steps, tiny splits.
    "quick": {
        "data.train_examples": 144,
        "data.eval_examples": 64,
        "data.max_length": 32,
        "data.pack": False,
        "data.length_buckets": (),  # one batch shape: every phase compiles once
        "data.group_by_length": 0,
        "data.num_threads": 1,
        "train.batch_size": 8,
        "train.eval_batch_size": 64,
        "train.steps": 18,
        "train.eval_every_steps": 6,
        "train.checkpoint_every_steps": 0,  # phase ends only: checkpoints are most of a tiny run's cost
        "train.log_every_steps": 3,
        "train.keep_checkpoints": 1,
    },
    "none": {},  # the base config's own sizing
}
DEFAULT_SEEDS = {"real": (0, 1, 2), "quick": (0, 1), "none": (0, 1, 2)}
# Embeddings, layer_0, head: every schedule still has its shape, with fewer phases to compile.
QUICK_LAYERS = 1


# ----------------------------------------------------------------------------- the quick model


def shallow_bert(source: str, folder: Path, layers: int = QUICK_LAYERS) -> Path:
    """The first `layers` encoder layers of a BERT checkpoint (with its tokenizer files) in `folder`.

    Pretrained features, as in the real sweep, at a fraction of the compile and step cost.
    """
    from safetensors.numpy import save_file

    from ftjax.pretrained import formats, sources

    if (folder / "model.safetensors").exists():
        return folder
    ckpt = sources.resolve(source)
    cfg = json.loads(ckpt.config_file.read_text()) if ckpt.config_file else {}
    if cfg.get("model_type") != "bert":
        raise sweep.SweepError(
            f"--quick shortens BERT checkpoints only, and {source} is {cfg.get('model_type')!r}; "
            "pass --model-source with a small checkpoint of your architecture"
        )
    arrays = {}
    for path in ckpt.weights:
        arrays.update(formats.read_arrays(path))
    keep = {k: v for k, v in arrays.items() if not _deeper_layer(k, layers)}
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ckpt.folder.iterdir():
        if f.suffix in (".json", ".txt") and f.name != "config.json":
            shutil.copy(f, tmp / f.name)
    (tmp / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": layers}, indent=2))
    save_file({k: v.copy() for k, v in keep.items()}, str(tmp / "model.safetensors"))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # whole or absent: a killed build is redone
    return folder


def _deeper_layer(key: str, layers: int) -> bool:
    parts = key.split(".")
    for i, p in enumerate(parts[:-1]):
        if p == "layer" and parts[i + 1].isdigit():
            return int(parts[i + 1]) >= layers
    return False


# ----------------------------------------------------------------------------- the sweep


@dataclasses.dataclass
class Sweep:
    """Everything a sweep invocation needs, resolved before anything trains."""

    sweep_dir: Path
    base: Path
    base_arg: str | None
    schedules: list[FreezeSchedule]
    runs: list[sweep.Run]
    plans: dict[str, Any]  # run name -> ResolvedPlan
    batch_size: int
    common: dict[str, Any]


def parse_base(spec: str) -> tuple[Path, str | None]:
    path, _, arg = spec.partition(":")
    return Path(path).resolve(), (arg or None)


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """--set KEY=VALUE pairs; VALUE is a Python literal (1e-4, (), 'x'), else taken as a string."""
    out = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise sweep.SweepError(
                f"--set {item!r}: use --set KEY=VALUE, e.g. --set train.epochs=3"
            )
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


# Opt-in (--schedules): the default sweep is the ten freeze schedules.
ADAPTER_SCHEDULES = ("lora_r4", "lora_r8", "lora_r16", "qlora_r16")


def pick_schedules(spec: str | None) -> list[FreezeSchedule]:
    if not spec:
        return [s for name, s in SCHEDULES.items() if name not in ADAPTER_SCHEDULES]
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCHEDULES]
    if unknown or not names:
        raise sweep.SweepError(
            f"--schedules: unknown {unknown or spec!r}; choose from {', '.join(SCHEDULES)}"
        )
    return [SCHEDULES[n] for n in dict.fromkeys(names)]


def parse_seeds(spec: str | None, size: str) -> tuple[int, ...]:
    if not spec:
        return DEFAULT_SEEDS[size]
    try:
        seeds = tuple(int(s) for s in spec.split(",") if s.strip())
    except ValueError:
        raise sweep.SweepError(
            f"--seeds {spec!r}: give comma-separated integers, e.g. --seeds 0,1,2"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise sweep.SweepError(f"--seeds {spec!r}: give distinct integers, e.g. --seeds 0,1,2")
    return seeds


def prepare(args: argparse.Namespace, planner: sweep_plans.Planner) -> Sweep:
    """Builds every run's config and resolves its plan; any bad value fails here, before training."""
    size = "quick" if args.quick else args.size
    schedules, seeds = (
        pick_schedules(args.schedules),
        parse_seeds(args.seeds, size),
    )  # cheap checks first
    if args.workers < 1:
        raise sweep.SweepError(f"--workers {args.workers}: use 1 or more")
    extra = parse_sets(args.set)
    base, base_arg = parse_base(args.base_config)
    sweep_dir = Path(
        args.sweep_dir
        or REPO / "runs" / ("freeze_ablation_quick" if size == "quick" else "freeze_ablation")
    )
    sweep_dir = sweep_dir.resolve()
    common = dict(RUN_SIZES[size])
    base_cfg = sweep.build_config(base, base_arg, common)
    source = args.model_source
    if size == "quick" and source is None:
        source = str(shallow_bert(base_cfg.model.source, sweep_dir / "quick_model"))
    if source is not None:
        common["model.source"] = str(Path(source).resolve()) if Path(source).exists() else source
    common.update(extra)
    base_cfg = sweep.build_config(base, base_arg, common)
    if source is not None:  # the base config's groups may name layers this model lacks
        common["groups"] = planner.fitted_groups(base_cfg)
        base_cfg = sweep.build_config(base, base_arg, common)
    groups = planner.facts(base_cfg).groups.names
    lrs = LRs(args.head_lr, args.ft_lr, args.discr_lr, args.factor, args.lora_lr)
    variants = {s.name: {**common, **s.overrides(groups, lrs)} for s in schedules}
    runs = sweep.make_runs(sweep_dir, variants, seeds)
    plans = {}
    for run in runs:
        config = sweep.build_config(base, base_arg, run.overrides)
        try:
            plans[run.name] = planner.plan(config)
        except ValueError as e:
            raise sweep.SweepError(
                f"schedule {run.variant!r} does not fit this model/run: {e}"
            ) from e
    return Sweep(
        sweep_dir, base, base_arg, schedules, runs, plans, base_cfg.train.batch_size, common
    )


def write_plans(sw: Sweep) -> str:
    """plans.txt and plans/<schedule>.png (one per schedule: seeds share the plan); returns the text."""
    blocks = []
    for s in sw.schedules:
        runs = [r for r in sw.runs if r.variant == s.name]
        plan = sw.plans[runs[0].name]
        seeds = ", ".join(str(r.seed) for r in runs)
        png = sweep_plans.draw_plan(
            plan, s.name, sw.sweep_dir / "plans" / f"{s.name}.png", sw.batch_size
        )
        blocks.append(
            f"== {s.name} (seeds {seeds}): {s.description}\n"
            f"{sweep_plans.describe(plan, sw.batch_size)}\nplot: {png}\n"
        )
    text = "\n".join(blocks)
    (sw.sweep_dir / "plans.txt").write_text(text)
    return text


def report(sw: Sweep) -> list[Path]:
    records = [
        sweep_report.RunRecord(r.variant, r.seed, r.workdir, sw.plans[r.name], sw.batch_size)
        for r in sw.runs
    ]
    base = sw.base.relative_to(REPO) if sw.base.is_relative_to(REPO) else sw.base
    preamble = (
        f"Base config `{base}{':' + sw.base_arg if sw.base_arg else ''}` with "
        + ", ".join(f"`{k}={v!r}`" for k, v in sw.common.items() if k != "groups")
        + f". Command: `{' '.join(sys.argv)}`."
    )
    return sweep_report.write_outputs(
        records,
        sw.sweep_dir,
        title="Freeze/unfreeze schedule ablation",
        descriptions={s.name: s.description for s in sw.schedules},
        preamble=preamble,
    )


PUBLISHED = (
    "results.md",
    "results.csv",
    "val_curves.png",
    "test_accuracy.png",
    "plans.txt",
    "command.txt",
)


def publish(sw: Sweep, folder: Path) -> Path:
    """Copies the sweep's tables, plots, plans and command (not the runs) into `folder`, e.g. for git."""
    (folder / "plans").mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED:
        shutil.copy(sw.sweep_dir / name, folder / name)
    for png in (sw.sweep_dir / "plans").glob("*.png"):
        shutil.copy(png, folder / "plans" / png.name)
    return folder


def execute(sw: Sweep, workers: int, keep_checkpoints: bool) -> int:
    """Trains every unfinished run, refreshing the outputs as runs finish; 0 if all finished."""
    for run in sw.runs:
        sweep.write_run_config(run, sw.base, sw.base_arg)
    (sw.sweep_dir / "command.txt").write_text(" ".join(sys.argv) + "\n")
    started = time.time()

    def on_event(o: sweep.Outcome, i: int, n: int) -> None:
        if o.status == "done":
            res = json.loads(o.run.results_file.read_text())
            print(
                f"[{i}/{n}] {o.run.name}: test {(m := res.get('best_metric', 'accuracy'))} "
                f"{res['test'][m]:.4f} in {o.seconds:.0f} s "
                f"(sweep {time.time() - started:.0f} s)",
                flush=True,
            )
            if not keep_checkpoints:  # finished runs are never resumed; best/ keeps the model
                shutil.rmtree(o.run.workdir / "checkpoints", ignore_errors=True)
            try:  # a plotting problem must not stop an hour of training; the final report raises it
                report(sw)
            except Exception as e:  # noqa: BLE001
                print(f"warning: could not refresh the outputs: {e!r}", flush=True)
        elif o.status == "failed":
            print(
                f"[{i}/{n}] {o.run.name}: FAILED (exit {o.returncode}); {o.run.workdir / 'train.log'} ends:\n"
                f"{sweep.log_tail(o.run)}",
                flush=True,
            )
        else:
            print(
                f"[{i}/{n}] {o.run.name}: {'already finished' if o.status == 'skipped' else 'running in another sweep process'}",
                flush=True,
            )

    outcomes = sweep.run_all(sw.runs, sw.sweep_dir, workers=workers, on_event=on_event)
    outputs = report(sw)
    print("outputs:\n  " + "\n  ".join(str(p) for p in outputs))
    unfinished = [o.run.name for o in outcomes if o.status in ("failed", "busy")]
    if unfinished:
        print(
            f"{len(unfinished)} run(s) not finished: {', '.join(unfinished)}; rerun the same command to resume them"
        )
    return 1 if unfinished else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--base-config", default=str(DEFAULT_BASE), help="config file[:arg] the runs start from"
    )
    p.add_argument(
        "--size", choices=sorted(RUN_SIZES), default="real", help="run sizing (default: real)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="same as --size quick: every schedule end to end in minutes",
    )
    p.add_argument("--sweep-dir", help="folder of the sweep (default runs/freeze_ablation[_quick])")
    p.add_argument("--schedules", help=f"comma-separated subset of: {', '.join(SCHEDULES)}")
    p.add_argument("--seeds", help="comma-separated seeds (default: 0,1,2; quick: 0,1)")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="runs trained at once, each its own process (default 2: one run's single-threaded start-up "
        "and compilation overlaps another's training)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print and draw every run's phase plan; train nothing",
    )
    p.add_argument(
        "--model-source",
        help="checkpoint to use instead of the base config's (quick: a 1-layer cut of it)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run",
    )
    p.add_argument("--head-lr", type=float, default=LRs.head, help="LR of head-only phases")
    p.add_argument(
        "--ft-lr", type=float, default=LRs.ft, help="LR when every trainable group shares one"
    )
    p.add_argument(
        "--discr-lr", type=float, default=LRs.discr, help="the head's LR under discriminative LRs"
    )
    p.add_argument(
        "--factor",
        type=float,
        default=LRs.factor,
        help="discriminative divisor per group (ULMFiT 2.6)",
    )
    p.add_argument("--lora-lr", type=float, default=LRs.lora, help="LR of LoRA phases")
    p.add_argument(
        "--publish",
        metavar="DIR",
        help="when every run has finished, copy tables, plots and plans to DIR",
    )
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep finished runs' checkpoints/ (best/ is always kept)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sw = prepare(args, sweep_plans.Planner())
    except (sweep.SweepError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sw.sweep_dir.mkdir(parents=True, exist_ok=True)
    text = write_plans(sw)
    if args.dry_run:
        print(text)
        for run in sw.runs:
            print(f"{run.name}: {'finished' if run.done() else 'to run'} in {run.workdir}")
        return 0
    print(
        f"sweep: {len(sw.runs)} runs in {sw.sweep_dir} ({sum(r.done() for r in sw.runs)} already finished), "
        f"{args.workers} worker(s); plans in {sw.sweep_dir / 'plans.txt'}",
        flush=True,
    )
    status = execute(sw, args.workers, args.keep_checkpoints)
    if args.publish and status == 0:
        print(f"published to {publish(sw, Path(args.publish))}")
    return status


if __name__ == "__main__":
    sys.exit(main())
