"""Sequence packing against padding, measured in one run: real tokens per second of MiniLM's full
fine-tuning step on Rotten Tomatoes batches.

Three batchings of the default experiment's training split (batch 32, max_length 64):
  padded   every batch padded to 64 tokens, shuffled batches;
  buckets  length buckets (16, 32, 48, 64) and group_by_length=50 (the default until 2026-12-03);
  packed   `data.pack`, the default experiment's: shuffled batches, several snippets per row of
           64 tokens.
Each arm's first `--batches` training batches are built up front (every shape compiled and run
once before timing), then the arms are timed in interleaved rounds, so load on the machine hits
all alike. Real tokens are the batch's non-padding tokens.

    python benchmarks/packing.py [--batches 24] [--rounds 3] [--threads 2]

The last line is a JSON object: tokens/s and examples/s per arm, the tokens each arm computes
per batch (rows x length), and packed_over_buckets / packed_over_padded (tokens/s ratios).
"""

from __future__ import annotations

import argparse
import json
import time

import vs_pytorch  # this folder: thread limits, machine and versions


def _arms(batches: int, seed: int = 0):
    """{arm: (model, list of host batches)} over the default experiment's train split."""
    import dataclasses
    import importlib.util
    import sys
    from pathlib import Path

    import numpy as np

    from ftjax import config as cfg_lib
    from ftjax import tasks
    from ftjax.data import build_splits, load_records
    from ftjax.models.base import packed
    from ftjax.pretrained.load import load_pretrained

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("cfg", root / "configs/minilm_rotten_tomatoes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    base = cfg_lib.data_config(config)
    records = load_records(base, "classification")
    task = tasks.from_config(config, records)
    pre = load_pretrained(config.model.source, task.output_size, pooling="mean", dropout=0.0)
    variants = {
        "padded": dict(length_buckets=(), group_by_length=0, pack=False),
        "buckets": dict(length_buckets=(16, 32, 48), group_by_length=50, pack=False),
        "packed": dict(length_buckets=(), group_by_length=0, pack=True),
    }
    arms = {}
    for name, change in variants.items():
        data = dataclasses.replace(base, **change)
        train = build_splits(data, pre.preprocessing, task, records=records)["train"]
        it = train.train_iterator(config.train.batch_size, seed=seed)
        model = packed(pre.model) if data.pack else pre.model
        arms[name] = (model, [next(it) for _ in range(batches)])
        print(f"{name}: {batches} batches built", file=sys.stderr, flush=True)
    return pre, task, arms, np


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=24, help="training batches per arm")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    vs_pytorch.limit_threads(args.threads)
    import jax

    from ftjax import param_groups, phases, sharding
    from ftjax.optim import OptimConfig
    from ftjax.phase_steps import PhaseSteps

    pre, task, arms, np = _arms(args.batches)
    groups = param_groups.assign_groups(pre.params, pre.model.layer_groups)
    full = phases.Phase("all", trainable=tuple(groups.names), lr=1e-4, steps=10)
    plan = phases.resolve_plan(phases.Plan((full,)), groups.names)
    optim = OptimConfig(name="adamw", weight_decay=0.01, clip_norm=1.0)
    runners, tokens, examples, computed = {}, {}, {}, {}
    for name, (model, host) in arms.items():
        engine = PhaseSteps(model, groups, plan, optim, task=task)
        state = engine.init_state(pre.params, pre.state, jax.random.key(0), phase=0)
        batches = [sharding.shard_batch(b, engine.mesh) for b in host]
        tokens[name] = sum(int((b["attention_mask"] > 0).sum()) for b in host)
        examples[name] = sum(len(b["label"]) for b in host)
        computed[name] = float(np.mean([b["input_ids"].size for b in host]))
        seen = set()
        for b in batches:  # every shape compiled and run once
            if b["input_ids"].shape not in seen:
                seen.add(b["input_ids"].shape)
                state, m = engine.train_step(0, state, b)
                jax.block_until_ready(m["loss"])
        runners[name] = [engine, state, batches]
    seconds = {name: [] for name in arms}
    for r in range(args.rounds):
        for name, runner in runners.items():
            engine, state, batches = runner
            t0 = time.perf_counter()
            for b in batches:
                state, m = engine.train_step(0, state, b)
            jax.block_until_ready(m["loss"])
            seconds[name].append(time.perf_counter() - t0)
            runner[1] = state
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()),
            flush=True,
        )
    best = {n: float(np.median(s)) for n, s in seconds.items()}
    tps = {n: tokens[n] / best[n] for n in arms}
    result = {
        "machine": vs_pytorch.machine(),
        "batches": args.batches,
        **{f"{n}_tokens_per_s": round(tps[n], 1) for n in arms},
        **{f"{n}_examples_per_s": round(examples[n] / best[n], 2) for n in arms},
        **{f"{n}_computed_tokens_per_batch": round(computed[n], 1) for n in arms},
        "packed_over_buckets": round(tps["packed"] / tps["buckets"], 3),
        "packed_over_padded": round(tps["packed"] / tps["padded"], 3),
    }
    for k, v in result.items():
        print(f"{k:36s} {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
