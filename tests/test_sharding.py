"""Data-parallel and FSDP meshes of 8 (virtual CPU) devices end a multi-phase run with the same
params as one device, compiling once per phase. Runs in a subprocess because the device count is
fixed when JAX starts."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ftjax import sharding

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    from flax import traverse_util
    import engine_models as em
    from ftjax import param_groups, phases, sharding
    from ftjax.phase_steps import PhaseSteps, run_plan
    from ftjax.tasks import Classification

    model = em.{model}
    make = lambda rng: {batch}
    params, model_state = em.init(model, make(np.random.default_rng(0)))
    groups = param_groups.assign_groups(params, model.layer_groups)
    plan = phases.resolve_plan(em.three_phase_plan(groups.names, steps=(2, 2, 2), lr=1e-3), groups.names)
    out = {{}}
    for name, cfg in [("one", None), ("dp", sharding.MeshConfig(data=8)), ("fsdp", sharding.MeshConfig(data=2, fsdp=4))]:
        mesh = sharding.make_mesh(cfg, jax.devices()) if cfg else sharding.make_mesh(devices=jax.devices()[:1])
        engine = PhaseSteps(model, groups, plan, em.ADAMW, task=Classification(3), mesh=mesh)
        state = engine.init_state(params, model_state, jax.random.key(1))
        rng = np.random.default_rng(1)
        state, _ = run_plan(engine, state, lambda s: make(rng))
        specs = {{"/".join(k): str(v.sharding.spec) for k, v in traverse_util.flatten_dict(state.params).items()}}
        flat = {{"/".join(k): np.asarray(v).tolist() for k, v in traverse_util.flatten_dict(jax.device_get(state.params)).items()}}
        out[name] = {{"params": flat, "compiles": engine.compile_count, "specs": specs, "devices": mesh.size}}
    print("RESULT" + json.dumps(out))
    """
)


def _run(model: str, batch: str) -> dict:
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    code = SCRIPT.format(tests=str(Path(__file__).parent), model=model, batch=batch)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def _check(out: dict) -> None:
    assert out["dp"]["devices"] == out["fsdp"]["devices"] == 8
    for name in ("one", "dp", "fsdp"):
        assert out[name]["compiles"] == 3, (name, out[name]["compiles"])
    assert any("fsdp" in s for s in out["fsdp"]["specs"].values()), "FSDP run sharded no parameter"
    ref = out["one"]["params"]
    for name in ("dp", "fsdp"):
        for path, value in ref.items():
            if path.endswith("attention/key/bias"):
                # Its true gradient is exactly zero (softmax ignores a per-query shift), so Adam turns
                # float noise into +-lr steps on any device layout: only bound it by the LR.
                assert np.abs(np.asarray(out[name]["params"][path])).max() < 0.1, path
                continue
            got, want = np.asarray(out[name]["params"][path]), np.asarray(value)
            # Per tensor: relative error <= 1e-5, with a 1e-6 RMS floor for near-zero tensors (fresh
            # biases). Not elementwise: Adam's first steps are ~lr*sign(g), so a coordinate whose
            # gradient is float noise can move differently under another reduction order.
            err, ref_norm = np.linalg.norm(got - want), np.linalg.norm(want)
            assert err <= 1e-5 * ref_norm + 1e-6 * np.sqrt(want.size), (
                f"{name}: {path}: {err} vs |ref| {ref_norm}"
            )


@pytest.mark.slow
def test_dp_and_fsdp_match_one_device_on_the_encoder():
    _check(_run("encoder(hidden=64, mlp=128)", "em.text_batch(rng, 16, 16, 100, 3)"))


@pytest.mark.slow
def test_dp_and_fsdp_match_one_device_on_the_convnet_with_batch_norm():
    _check(_run("convnet(widths=(16, 16, 32))", "em.image_batch(rng, 16, 8, 3)"))


def test_fsdp_rules_shard_the_largest_divisible_dimension_and_explicit_rules_win():
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    params = {"a": {"kernel": np.zeros((64, 128))}, "b": {"bias": np.zeros(3)}}
    specs = sharding.param_specs(params, mesh, [("b/.*", P())])
    assert (
        specs["a"]["kernel"] == P() and specs["b"]["bias"] == P()
    )  # fsdp axis of size 1 replicates
    assert sharding._auto_fsdp_spec((64, 128), 4, 16) == P(None, "fsdp")
    assert sharding._auto_fsdp_spec((6, 7), 4, 16) == P()
    opt_like = {"mu": params, "count": np.zeros(())}
    sh = sharding.shardings_like(
        opt_like, {"a": {"kernel": P(None, "data")}, "b": {"bias": P()}}, mesh
    )
    assert sh["mu"]["a"]["kernel"].spec == P(None, "data") and sh["count"].spec == P()
