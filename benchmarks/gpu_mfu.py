"""Model FLOPs utilisation of BERT-base fine-tune steps on one GPU, per phase, ftjax beside PyTorch.

    python benchmarks/gpu_mfu.py [--steps 30] [--batches 32,64] [--seq 128] [--phases head,top2,full]
                                 [--no-torch] [--torch-compile] [--out benchmarks/results]

Each phase is one of a fine-tuning plan's steps on BERT-base (12 layers, hidden 768, 2-way head,
AdamW): `head` (the new head only), `top2` (the top two encoder layers, the pooler and the head)
and `full` (every parameter). bfloat16 compute with float32 parameters and a float32 loss. The
timed loop is what a training loop does: no host synchronisation per step; each step's metrics are
fetched two steps later, so the host never waits on the step it just queued; the time is the
loop's wall time over `--steps` steps after warm-up. Throughput does not depend on the weights'
values, so the models are randomly initialised (no BERT-base weights ship offline): nothing here
is a pretrained result.

MFU = the phase's model FLOPs per step / step time / the chip's dense bf16 peak. Model FLOPs follow
Kaplan et al. 2020 and PaLM appendix B (2 FLOPs per multiply-add; the embeddings' gathers are
free): the forward costs 2 x (non-embedding params) + 4 x layers x seq x hidden per token, and the
backward twice the forward of the part it runs through: the trainable layers and everything above
them. So `full` is the usual 6N + 12 L s h per token and `head` about a forward pass. XLA's own
count of each compiled step is printed beside it. The train step's state is donated; the script
checks that the step really consumed its input buffers. PyTorch runs the same shapes with
transformers' BertForSequenceClassification under bf16 autocast and fused AdamW, eagerly and
(`--torch-compile`) compiled.

`--out DIR` writes gpu_mfu_<device>.json and .md there with the date, device and versions.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib.metadata
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

# Dense bf16 peak per chip, TFLOP/s (vendor datasheets, without sparsity).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
BERT_BASE = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
    type_vocab_size=2,
)
PHASES = ("head", "top2", "full")
TOP_LAYERS = {"head": 0, "top2": 2}  # trainable encoder layers per phase; full: all of them


def trained_layers(phase: str) -> int:
    return TOP_LAYERS.get(phase, BERT_BASE["num_hidden_layers"])


def phase_flops(
    phase: str, batch: int, seq: int, layer_params: int, top_params: int, head_params: int
) -> float:
    """Model FLOPs of one train step of `phase` (module doc): `layer_params` per encoder layer,
    `top_params` the pooler and head, `head_params` the head alone (what `head` trains)."""
    layers, hidden = BERT_BASE["num_hidden_layers"], BERT_BASE["hidden_size"]
    tokens = batch * seq
    k = trained_layers(phase)
    forward = 2 * (layers * layer_params + top_params) + 4 * layers * seq * hidden
    # `head` runs the backward through the head alone; other phases also through the pooler.
    above = head_params if phase == "head" else k * layer_params + top_params
    backward = 2 * (2 * above + 4 * k * seq * hidden)
    return float((forward + backward) * tokens)


def synthetic_batch(batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(1000, BERT_BASE["vocab_size"], (batch, seq), dtype=np.int32),
        "attention_mask": np.ones((batch, seq), np.int32),
        "token_type_ids": np.zeros((batch, seq), np.int32),
        "label": rng.integers(0, 2, batch, dtype=np.int32),
    }


def loop_step_s(step: Callable[[], Any], steps: int, warmup: int = 3, lag: int = 2) -> float:
    """Seconds per step of `step()` (it queues one step, returns its metrics) over `steps` steps,
    each step's metrics fetched `lag` steps later, as a training loop's logging would."""
    for _ in range(warmup):
        jax.block_until_ready(step())
    pending: collections.deque = collections.deque()
    started = time.perf_counter()
    for _ in range(steps):
        pending.append(step())
        if len(pending) > lag:
            jax.device_get(pending.popleft())
    jax.block_until_ready(list(pending))
    return (time.perf_counter() - started) / steps


def _param_counts(params: Any) -> dict[str, int]:
    sizes = collections.Counter()
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        key = jax.tree_util.keystr(path)
        part = next((p for p in ("embeddings", "layer_0'", "pooler", "head") if p in key), None)
        if part is not None:
            sizes[part.rstrip("'")] += int(np.prod(x.shape))
    return {
        "layer": sizes["layer_0"],
        "top": sizes["pooler"] + sizes["head"],
        "head": sizes["head"],
    }


def time_ftjax(
    batch: dict[str, np.ndarray], steps: int, phases: tuple[str, ...] = PHASES
) -> dict[str, Any]:
    """Per phase: seconds per step, XLA's FLOP count and whether the step donated its state;
    plus the parameter counts `phase_flops` takes."""
    from ftjax.models.bert import BertConfig, bert_classifier
    from ftjax.optim import OptimConfig
    from ftjax.param_groups import assign_groups
    from ftjax.phase_steps import PhaseSteps
    from ftjax.phases import Phase, Plan, resolve_plan
    from ftjax.tasks import Classification

    model = bert_classifier(BertConfig(**BERT_BASE, num_classes=2, dtype="bfloat16"))
    params, model_state = model.init(jax.random.key(0), batch)
    groups = assign_groups(params, model.layer_groups)
    layers = BERT_BASE["num_hidden_layers"]
    trainable = {
        "head": ("head",),
        "top2": (f"layer_{layers - 2}", f"layer_{layers - 1}", "pooler", "head"),
        "full": groups.names,
    }
    plan = resolve_plan(
        Plan(tuple(Phase(p, trainable[p], 1e-5, steps=1) for p in phases)), groups.names
    )
    engine = PhaseSteps(
        model, groups, plan, OptimConfig(name="adamw", weight_decay=0.01), task=Classification(2)
    )
    out: dict[str, Any] = {"params": _param_counts(params), "phases": {}}
    for index, phase in enumerate(phases):
        state = {"s": engine.init_state(params, model_state, jax.random.key(1), phase=index)}
        first = jax.tree.leaves(state["s"].params)[0]

        def step(index=index, state=state):
            state["s"], metrics = engine.train_step(index, state["s"], batch)
            return metrics

        jax.block_until_ready(step())  # compiles
        compiled = engine.compiled_steps(index)[0]
        out["phases"][phase] = {
            "donated": first.is_deleted(),
            "xla_flops": float(compiled.cost_analysis().get("flops", float("nan"))),
            "step_s": loop_step_s(step, steps),
        }
        del state
    return out


def time_torch(
    batch: dict[str, np.ndarray],
    steps: int,
    phases: tuple[str, ...],
    compiled: bool,
    device: str = "cuda",
) -> dict[str, float]:
    """Seconds per step per phase of transformers' BERT on `device` (frozen modules in eval
    mode)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    inputs = {
        k: torch.as_tensor(v, dtype=torch.long, device=device)
        for k, v in batch.items()
        if k != "label"
    }
    labels = torch.as_tensor(batch["label"], dtype=torch.long, device=device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    out = {}
    for phase in phases:
        model = BertForSequenceClassification(BertConfig(**BERT_BASE, num_labels=2)).to(device)
        k = trained_layers(phase)
        train_modules = [model.classifier]
        if phase != "head":
            train_modules += [
                model.bert.pooler,
                *model.bert.encoder.layer[len(model.bert.encoder.layer) - k :],
            ]
        if phase == "full":
            train_modules = [model]
        model.requires_grad_(False).eval()
        for m in train_modules:
            m.requires_grad_(True).train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.01, fused=True)
        forward = torch.compile(model) if compiled else model

        def step(forward=forward, opt=opt):
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = forward(**inputs, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        for _ in range(3):
            step()
        sync()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        out[phase] = (time.perf_counter() - started) / steps
        del model, opt
    return out


def rows(
    device: str, batch: int, seq: int, ftjax: dict[str, Any], torch_s: dict[str, dict[str, float]]
) -> list[dict[str, Any]]:
    """One result row per phase: times, model TFLOP/s, MFU and the ftjax/PyTorch ratios."""
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device), None)
    counts = ftjax["params"]
    out = []
    for phase, measured in ftjax["phases"].items():
        flops = phase_flops(phase, batch, seq, counts["layer"], counts["top"], counts["head"])
        row = {
            "batch": batch,
            "phase": phase,
            "model_tflop_per_step": round(flops / 1e12, 3),
            "xla_tflop_per_step": round(measured["xla_flops"] / 1e12, 3),
            "ftjax_ms": round(1e3 * measured["step_s"], 2),
            "ftjax_mfu": round(flops / measured["step_s"] / 1e12 / peak, 3) if peak else None,
            "donated": measured["donated"],
        }
        for name, times in torch_s.items():
            row[f"{name}_ms"] = round(1e3 * times[phase], 2)
            row[f"ftjax_over_{name}"] = round(measured["step_s"] / times[phase], 3)
        out.append(row)
    return out


def _versions() -> dict[str, str]:
    found = {}
    for name in ("jax", "jaxlib", "flax", "torch", "transformers"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def _write(out_dir: Path, record: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "gpu_mfu_" + record["device"].lower().replace("nvidia ", "").replace(" ", "_")
    (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    keys = list(record["rows"][0])
    table = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    table += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in record["rows"]]
    head = [
        f"# BERT-base fine-tune steps on one GPU: ftjax vs PyTorch, MFU per phase ({record['device']})",
        "",
        f"- Date: {record['date']}. Versions: {record['versions']}.",
        f"- Command: `{record['command']}`; seq {record['seq']}, {record['steps']} timed steps.",
        "",
    ]
    (out_dir / f"{stem}.md").write_text("\n".join(head + table) + "\n")
    return out_dir / f"{stem}.md"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batches", default="32,64", help="comma-separated batch sizes")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--phases", default=",".join(PHASES))
    p.add_argument("--no-torch", action="store_true", help="time ftjax only")
    p.add_argument("--torch-compile", action="store_true", help="also time torch.compile")
    p.add_argument("--out", help="folder for gpu_mfu_<device>.json/.md")
    args = p.parse_args()
    phases = tuple(x for x in args.phases.split(",") if x)
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise SystemExit(f"--phases: unknown {unknown}; use some of {', '.join(PHASES)}")
    device = jax.devices()[0]
    if device.platform != "gpu":
        raise SystemExit(
            f"gpu_mfu.py measures a GPU; JAX's first device is {device.platform} ({device.device_kind})"
        )
    all_rows = []
    for batch_size in (int(b) for b in args.batches.split(",")):
        batch = synthetic_batch(batch_size, args.seq)
        ftjax = time_ftjax(batch, args.steps, phases)
        torch_s = {}
        if not args.no_torch:
            torch_s["torch"] = time_torch(batch, args.steps, phases, compiled=False)
            if args.torch_compile:
                torch_s["torch_compile"] = time_torch(batch, args.steps, phases, compiled=True)
        for row in rows(device.device_kind, batch_size, args.seq, ftjax, torch_s):
            all_rows.append(row)
            print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    record = {
        "device": device.device_kind,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": _versions(),
        "command": "python benchmarks/gpu_mfu.py " + " ".join(sys.argv[1:]),
        "seq": args.seq,
        "steps": args.steps,
        "rows": all_rows,
    }
    if args.out:
        print(f"wrote {_write(Path(args.out), record)}")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
