"""The benchmarks keep running: vs_pytorch's pieces on real models, and the whole script in --quick mode."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "vs_pytorch.py"


def _load_script(name: str = "vs_pytorch"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


vs = _load_script()


def test_torch_freezing_puts_fully_frozen_modules_in_eval_mode():
    model = torch.nn.Sequential(
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5)
        ),
        torch.nn.Sequential(
            torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5)
        ),
    )
    vs._torch_freeze(model, {"1.0.weight", "1.0.bias", "1.1.weight", "1.1.bias"})
    frozen, trainable = model[0], model[1]
    assert not any(m.training for m in frozen.modules())  # BN on running stats, dropout off
    assert all(m.training for m in trainable.modules())
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in trainable.parameters())
    before = frozen[1].running_mean.clone()
    model(torch.randn(2, 3, 5, 5)).sum().backward()
    assert torch.equal(frozen[1].running_mean, before)


def test_synthetic_text_batch_is_padded_after_cls():
    batch = vs.synthetic_batch(vs.MINILM)
    assert batch["input_ids"].shape == (32, 64)
    assert (batch["input_ids"][:, 0] == 101).all()
    assert batch["attention_mask"].min() == 0  # padding is exercised
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    assert batch["label"].max() < vs.MINILM.num_classes


def test_summary_ratios_and_bars_follow_the_timings():
    t = {
        "ftjax": {"head": 10.0, "top2": 20.0, "full": 40.0, "forward": 5.0},
        "torch": {"head": 30.0, "top2": 25.0, "full": 80.0, "forward": 20.0},
    }
    memory = {
        "m": {
            "ftjax": {"peak_rss_mib": 500.0, "rss_before_model_mib": 1.0},
            "torch": {"peak_rss_mib": 400.0, "rss_before_model_mib": 1.0},
        }
    }
    s = vs.summarise({"m": t}, memory)
    assert s["ftjax_over_torch"]["m"] == {"head": 0.333, "top2": 0.8, "full": 0.5, "forward": 0.25}
    assert s["phase_ratios"]["ftjax"]["m"] == {
        "head/full": 0.25,
        "top2/full": 0.5,
        "forward/full": 0.125,
    }
    assert s["bars"]["ftjax_le_0.67x_torch"]["m"] == {
        "head": True,
        "top2": False,
        "full": True,
        "forward": True,
    }
    assert s["bars"]["ftjax_head_le_1.2x_forward"]["m"] is False  # head 10 ms = 2x forward 5 ms
    assert s["bars"]["ftjax_peak_rss_le_torch"]["m"] is False


@pytest.mark.slow
def test_vs_pytorch_quick_runs_end_to_end(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary["ftjax_over_torch"]) == set(vs.MODELS)
    for per in summary["ftjax_over_torch"].values():
        assert set(per) == set(vs.SETTINGS) and all(np.isfinite(v) and v > 0 for v in per.values())
    for fw in vs.FRAMEWORKS:
        assert set(summary["phase_ratios"][fw]) == set(vs.MODELS)
    for peaks in summary["peak_rss_mib"].values():
        assert all(peaks[fw] > 100 for fw in vs.FRAMEWORKS)  # a real model was loaded and stepped
    written = json.loads((tmp_path / "vs_pytorch_cpu.json").read_text())
    assert written["ftjax_over_torch"] == summary["ftjax_over_torch"]
    assert written["threads"] >= 1 and "--quick" in written["command"]
    assert json.dumps(summary) in (tmp_path / "vs_pytorch_cpu.md").read_text()


def test_gpu_mfu_counts_each_phases_flops_and_times_its_steps_without_a_sync(monkeypatch):
    mfu = _load_script("gpu_mfu")
    # BERT-base: 7.08M params per layer, pooler + head 0.59M; the full step is 6N + 12 L s h per
    # token (2.16 TFLOP at b32 s128), the head-only step about a forward pass (a third of it).
    layer, head = 7_087_872, 768 * 2 + 2
    top = 768 * 768 + 768 + head
    full = mfu.phase_flops("full", 32, 128, layer, top, head)
    n = 12 * layer + top
    assert full == pytest.approx((6 * n + 12 * 12 * 128 * 768) * 32 * 128)
    assert full == pytest.approx(2.163e12, rel=1e-3)  # the H200 record's model_tflop_per_step
    head_only = mfu.phase_flops("head", 32, 128, layer, top, head)
    top2 = mfu.phase_flops("top2", 32, 128, layer, top, head)
    assert full / 3 < head_only < 1.01 * full / 3 < top2 < full
    # The ftjax side on a BERT small enough for CPU: a real PhaseSteps step per phase, donated,
    # XLA's FLOP count (cheaper phases compile to fewer FLOPs), and the rows' bookkeeping.
    for key, value in dict(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64
    ).items():
        monkeypatch.setitem(mfu.BERT_BASE, key, value)
    out = mfu.time_ftjax(mfu.synthetic_batch(4, 16), steps=3)
    layer = 4 * (32 * 32 + 32) + 2 * (32 * 64) + 64 + 32 + 2 * 2 * 32  # attention, FFN, LayerNorms
    assert out["params"] == {"layer": layer, "top": 32 * 32 + 32 + 32 * 2 + 2, "head": 32 * 2 + 2}
    phases = out["phases"]
    assert list(phases) == ["head", "top2", "full"]
    assert all(p["donated"] and p["step_s"] > 0 for p in phases.values()), phases
    assert phases["head"]["xla_flops"] < phases["top2"]["xla_flops"] < phases["full"]["xla_flops"]
    torch_s = {"torch": {p: 2 * v["step_s"] for p, v in phases.items()}}
    rows = mfu.rows("NVIDIA H200", 4, 16, out, torch_s)
    assert [r["phase"] for r in rows] == ["head", "top2", "full"]
    assert all(r["ftjax_over_torch"] == 0.5 and r["ftjax_mfu"] is not None for r in rows), rows
    assert mfu.rows("Some GPU", 4, 16, out, {})[0]["ftjax_mfu"] is None  # unknown peak


def test_gpu_mfu_torch_side_trains_only_each_phases_modules(monkeypatch):
    pytest.importorskip("torch")
    import torch

    mfu = _load_script("gpu_mfu")
    for key, value in dict(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64
    ).items():
        monkeypatch.setitem(mfu.BERT_BASE, key, value)
    made = []
    real = torch.optim.AdamW

    def adamw(params, **kw):
        params = list(params)
        made.append(sum(p.numel() for p in params))
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    out = mfu.time_torch(mfu.synthetic_batch(4, 16), 2, mfu.PHASES, compiled=False, device="cpu")
    assert set(out) == set(mfu.PHASES) and all(v > 0 for v in out.values())
    layer = 4 * (32 * 32 + 32) + 2 * (32 * 64) + 64 + 32 + 2 * 2 * 32
    top = 32 * 32 + 32 + 32 * 2 + 2
    assert made[:2] == [32 * 2 + 2, 2 * layer + top], made  # head; top two layers, pooler, head
    assert made[2] > 3 * layer + top  # full: the embeddings too


def test_gpu_mfu_loop_fetches_metrics_a_few_steps_behind():
    mfu = _load_script("gpu_mfu")
    fetched, queued = [], []
    import jax.numpy as jnp

    def step():
        queued.append(len(queued))
        return jnp.asarray(queued[-1])

    real_get = mfu.jax.device_get
    try:
        mfu.jax.device_get = lambda x: fetched.append((int(x), len(queued))) or real_get(x)
        assert mfu.loop_step_s(step, steps=6, warmup=1, lag=2) > 0
    finally:
        mfu.jax.device_get = real_get
    # Step i's metrics (the warm-up step is 0) are fetched once step i + 2 is queued (i + 3 steps).
    assert fetched == [(i, i + 3) for i in range(1, 5)], fetched


def test_end_to_end_extrapolates_the_recipe_from_its_steps():
    e2e = _load_script("end_to_end")
    # 3 epochs of 287 steps, 3 validation passes of 32 batches and a test pass of 80.
    assert e2e.recipe_seconds(1.0, 0.0) == 861
    assert e2e.recipe_seconds(0.0, 1.0) == 3 * 32 + 80
    summary = e2e.summarise(300.0, 0.84, [1.0, 2.0], [0.5, 0.5])
    assert summary["torch_recipe_s"] == 861 * 1.5 + 176 * 0.5
    assert summary["ftjax_over_torch"] == round(300 / (861 * 1.5 + 88), 3)
    assert summary["bar_ratio_le_0.5_at_acc_ge_0.838"]
    assert not e2e.summarise(300.0, 0.83, [1.0], [0.5])["bar_ratio_le_0.5_at_acc_ge_0.838"]
    buckets = e2e.summarise(300.0, 0.84, [1.0], [0.5], buckets=(360.0, 0.835))
    assert buckets["buckets_over_default"] == 1.2 and buckets["buckets_test_accuracy"] == 0.835
    assert buckets["buckets_over_torch"] == round(360 / (861 + 88), 3)


@pytest.mark.slow
def test_end_to_end_quick_runs_both_sides(tmp_path):
    script = ROOT / "benchmarks" / "end_to_end.py"
    cmd = [sys.executable, str(script), "--quick", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ftjax_wall_s"] > 0 and 0.0 <= summary["ftjax_test_accuracy"] <= 1.0
    assert summary["torch_step_s"] > summary["torch_eval_batch_s"] > 0
    written = json.loads((tmp_path / "end_to_end_cpu.json").read_text())
    assert written["ftjax_over_torch"] == summary["ftjax_over_torch"] > 0
    assert "--quick" in written["command"]
