"""Checkpoints: resume picks the newest readable step, refuses a different structure, keeps the best."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftjax.checkpoint import CheckpointError, Checkpoints


def _state(value: float, width: int = 4):
    return {"params": {"w": jnp.full((3, width), value)}, "step": jnp.array(int(value), jnp.int32)}


def _abstract(tree):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _corrupt(step_dir: Path) -> None:
    for f in step_dir.rglob("*"):
        if f.is_file() and f.stat().st_size > 100:
            f.write_bytes(b"not a checkpoint")


def test_resume_returns_newest_state_and_meta(tmp_path):
    ckpts = Checkpoints(tmp_path)
    ckpts.save(1, _state(1.0), {"phase": 0})
    ckpts.save(2, _state(2.0), {"phase": 1})
    ckpts.wait()
    state, meta = ckpts.restore_latest(lambda meta: _abstract(_state(0.0)))
    assert meta == {"phase": 1}
    np.testing.assert_array_equal(state["params"]["w"], np.full((3, 4), 2.0))


def test_corrupt_latest_falls_back_to_previous(tmp_path, caplog):
    ckpts = Checkpoints(tmp_path)
    ckpts.save(1, _state(1.0), {"phase": 0})
    ckpts.save(2, _state(2.0), {"phase": 1})
    ckpts.wait()
    _corrupt(tmp_path / "checkpoints" / "2" / "state")
    state, meta = Checkpoints(tmp_path).restore_latest(lambda meta: _abstract(_state(0.0)))
    assert meta == {"phase": 0} and int(state["step"]) == 1
    assert "step 2" in caplog.text


def test_different_structure_is_an_error_naming_the_paths(tmp_path):
    ckpts = Checkpoints(tmp_path)
    ckpts.save(1, _state(1.0), {"phase": 0})
    ckpts.wait()
    with pytest.raises(
        CheckpointError, match=r"\['params'\]\['w'\]: checkpoint \(3, 4\) vs run \(3, 5\)"
    ):
        ckpts.restore_latest(lambda meta: _abstract(_state(0.0, width=5)))


def test_no_checkpoints_means_fresh_start(tmp_path):
    assert Checkpoints(tmp_path).restore_latest(lambda meta: None) is None


def test_best_keeps_only_the_newest_best(tmp_path):
    ckpts = Checkpoints(tmp_path)
    ckpts.save_best(5, _state(1.0)["params"], {"accuracy": 0.5})
    ckpts.save_best(9, _state(2.0)["params"], {"accuracy": 0.7})
    ckpts.wait()
    assert ckpts.best() == (9, {"accuracy": 0.7})
    params = ckpts.restore_best(_abstract(_state(0.0)["params"]))
    np.testing.assert_array_equal(params["w"], np.full((3, 4), 2.0))
    assert sorted(p.name for p in (tmp_path / "best").iterdir() if p.name.isdigit()) == ["9"]


def test_a_saved_step_never_lands_before_the_best_checkpoint_its_meta_names(tmp_path):
    # A kill right after `save` returns must not leave a resumable step whose best is unwritten:
    # the best write is async too, and large enough here to still be in flight without the wait.
    ckpts = Checkpoints(tmp_path)
    big = {"w": jnp.ones((2048, 2048))}
    ckpts.save_best(4, big, {"accuracy": 0.5, "step": 4})
    ckpts.save(4, _state(4.0), {"phase": 0, "best": {"accuracy": 0.5, "step": 4}})
    assert [p.name for p in (tmp_path / "best").iterdir()] == ["4"], (
        "best/4 was not committed before the step"
    )
    assert Checkpoints(tmp_path).best() == (4, {"accuracy": 0.5, "step": 4})
    ckpts.wait()
