"""Cost of each phase's compiled train step on a BERT-sized encoder, measured in one run.

A 6-layer, hidden-384, vocab-30522 encoder (batch 32, seq 64) with AdamW (weight decay 0.1) and
clipping, timed forward-only and per phase of head -> top 2 blocks + head -> all, interleaving the
four in rounds so load on a shared machine hits all alike. Prints a table of ms per step and
ratios, then, as the last line, a JSON object.

    python benchmarks/phase_cost.py [--rounds 5] [--steps 3]

Bar: head_over_forward <= 1.2 (a head-only step costs about a forward pass, because frozen
params are never differentiated) and compiles_per_phase == 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import engine_models as em  # noqa: E402

from ftjax import param_groups, phases, sharding  # noqa: E402
from ftjax.phase_steps import PhaseSteps  # noqa: E402
from ftjax.tables import format_table  # noqa: E402
from ftjax.tasks import Classification  # noqa: E402

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def main() -> None:
    args = _parse()
    model = em.bert_sized_encoder(max_len=args.seq)
    rng = np.random.default_rng(0)
    batch = em.text_batch(rng, args.batch, args.seq, 30522, 2)
    params, model_state = em.init(model, batch)
    groups = param_groups.assign_groups(params, model.layer_groups)
    plan = phases.resolve_plan(
        em.three_phase_plan(groups.names, steps=(10, 10, 10), lr=1e-4), groups.names
    )
    engine = PhaseSteps(model, groups, plan, em.ADAMW, task=Classification(2))
    states = [engine.init_state(params, model_state, jax.random.key(1), phase=i) for i in range(3)]
    batch = sharding.shard_batch(batch, engine.mesh)
    forward = jax.jit(lambda p, s, b: model.apply(p, s, b, train=False)[0])
    fwd_params, fwd_state = params, model_state  # never donated: init_state copies them

    def run_forward():
        return forward(fwd_params, fwd_state, batch)

    def make_runner(i):
        def run():
            states[i], metrics = engine.train_step(i, states[i], batch)
            return metrics["loss"]

        return run

    runners = {"forward": run_forward, **{p.name: make_runner(p.index) for p in plan.phases}}
    for run in runners.values():  # compile and warm up every variant before timing
        jax.block_until_ready(run())
    compiles_before = engine.compile_count
    events: list[float] = []
    listener = lambda name, secs, **kw: events.append(secs) if name == BACKEND_COMPILE else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    times = {k: [] for k in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                out = run()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    jax.monitoring.unregister_event_duration_listener(listener)
    ms = {k: float(np.median(v)) for k, v in times.items()}
    compiles_per_phase = (engine.compile_count + len(events)) / len(plan.phases)
    assert engine.compile_count == compiles_before == len(plan.phases)
    _print_table(ms)
    result = {
        "device": jax.devices()[0].device_kind,
        "batch": args.batch,
        "seq": args.seq,
        "ms_forward": round(ms["forward"], 2),
        "ms_head": round(ms["head"], 2),
        "ms_top2": round(ms["top2"], 2),
        "ms_full": round(ms["all"], 2),
        "head_over_forward": round(ms["head"] / ms["forward"], 3),
        "top2_over_full": round(ms["top2"] / ms["all"], 3),
        "full_over_forward": round(ms["all"] / ms["forward"], 3),
        "compiles_per_phase": compiles_per_phase,
    }
    print(json.dumps(result))


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    return ap.parse_args()


def _print_table(ms: dict[str, float]) -> None:
    rows = [
        (k, f"{v:.1f}", f"{v / ms['forward']:.2f}", f"{v / ms['all']:.2f}") for k, v in ms.items()
    ]
    print(format_table(("variant", "ms/step", "x forward", "x full"), rows))


if __name__ == "__main__":
    main()
