"""Model FLOPs utilisation of a BERT-base fine-tune step on one GPU, ftjax beside PyTorch.

    python benchmarks/gpu_mfu.py [--steps 30] [--batch 32] [--seq 128] [--no-torch]

Issue 7's GPU record: a full fine-tuning step (AdamW, every parameter trainable, 2-way head) of
BERT-base (12 layers, hidden 768) at batch 32, sequence 128, bfloat16 compute with float32
parameters, timed as the median of `--steps` steps after warm-up. Throughput does not depend on
the weights' values, so both models are randomly initialised (no BERT-base weights ship offline);
nothing here is a pretrained result.

MFU = model FLOPs per step / step time / the chip's dense bf16 peak. Model FLOPs are counted the
usual way (Kaplan et al. 2020; PaLM appendix B): 6 x (non-embedding params) per token for the
dense layers, plus 12 x layers x seq x hidden per token for attention scores and values; XLA's
own count of the compiled step is printed beside it. PyTorch runs the same shapes eagerly with
transformers' BertForSequenceClassification under bf16 autocast and fused AdamW.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

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


def model_flops_per_step(batch: int, seq: int, non_embedding_params: int) -> float:
    cfg = BERT_BASE
    per_token = 6 * non_embedding_params + 12 * cfg["num_hidden_layers"] * seq * cfg["hidden_size"]
    return per_token * batch * seq


def synthetic_batch(batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(1000, BERT_BASE["vocab_size"], (batch, seq), dtype=np.int32),
        "attention_mask": np.ones((batch, seq), np.int32),
        "token_type_ids": np.zeros((batch, seq), np.int32),
        "label": rng.integers(0, 2, batch, dtype=np.int32),
    }


def median_step_s(step, steps: int, warmup: int = 3) -> float:
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_ftjax(batch: dict[str, np.ndarray], steps: int) -> dict[str, float]:
    from ftjax.models.bert import BertConfig, bert_classifier
    from ftjax.optim import OptimConfig
    from ftjax.param_groups import assign_groups
    from ftjax.phase_steps import PhaseSteps
    from ftjax.phases import Phase, Plan, resolve_plan
    from ftjax.tasks import Classification

    model = bert_classifier(BertConfig(**BERT_BASE, num_classes=2, dtype="bfloat16"))
    params, model_state = model.init(jax.random.key(0), batch)
    groups = assign_groups(params, (("all", ".*"),))
    plan = resolve_plan(Plan((Phase("full", ("all",), 1e-5, steps=1),)), groups.names)
    engine = PhaseSteps(
        model,
        groups,
        plan,
        OptimConfig(name="adamw", weight_decay=0.01),
        task=Classification(2),
    )
    state = {"s": engine.init_state(params, model_state, jax.random.key(1))}
    non_embedding = sum(
        int(np.prod(x.shape))
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
        if "embeddings" not in jax.tree_util.keystr(p)
    )

    def step() -> None:
        state["s"], metrics = engine.train_step(0, state["s"], batch)
        jax.block_until_ready((state["s"], metrics))

    step()  # compiles
    xla_flops = engine.compiled_steps(0)[0].cost_analysis().get("flops", float("nan"))
    return {
        "step_s": median_step_s(step, steps),
        "xla_flops": float(xla_flops),
        "non_embedding_params": non_embedding,
    }


def time_torch(batch: dict[str, np.ndarray], steps: int) -> float:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(**BERT_BASE, num_labels=2)).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01, fused=True)
    inputs = {
        k: torch.as_tensor(v, dtype=torch.long).cuda() for k, v in batch.items() if k != "label"
    }
    labels = torch.as_tensor(batch["label"], dtype=torch.long).cuda()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**inputs, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    return median_step_s(step, steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--no-torch", action="store_true", help="time ftjax only")
    args = p.parse_args()
    device = jax.devices()[0]
    if device.platform != "gpu":
        raise SystemExit(
            f"gpu_mfu.py measures a GPU; JAX's first device is {device.platform} ({device.device_kind})"
        )
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device.device_kind), None)
    batch = synthetic_batch(args.batch, args.seq)
    ftjax = time_ftjax(batch, args.steps)
    flops = model_flops_per_step(args.batch, args.seq, ftjax["non_embedding_params"])
    out = {
        "device": device.device_kind,
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
        "model_tflop_per_step": round(flops / 1e12, 3),
        "xla_tflop_per_step": round(ftjax["xla_flops"] / 1e12, 3),
        "ftjax_step_ms": round(1000 * ftjax["step_s"], 2),
        "ftjax_model_tflops": round(flops / ftjax["step_s"] / 1e12, 1),
        "ftjax_mfu": round(flops / ftjax["step_s"] / 1e12 / peak, 3) if peak else None,
        "peak_bf16_tflops": peak,
    }
    if not args.no_torch:
        torch_s = time_torch(batch, args.steps)
        out.update(
            torch_step_ms=round(1000 * torch_s, 2),
            torch_mfu=round(flops / torch_s / 1e12 / peak, 3) if peak else None,
            ftjax_over_torch=round(ftjax["step_s"] / torch_s, 3),
        )
    for k, v in out.items():
        print(f"{k:22s} {v}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
