"""Workdirs that cannot hold a run: each is one clear error naming the path and the problem,
raised before the model or data is loaded (the configs here name a model that does not exist,
so an error about the workdir proves it came first), and nothing on disk is changed. A disk that
fills up during the run stops it with one error naming the last complete checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from train_fixtures import (  # noqa: F401  (pytest fixtures: data_dir, jax_cache, tiny_bert)
    checkpoint_steps,
    data_dir,
    jax_cache,
    run_cli,
    small_config,
    small_filesystem,
    snapshot,
    tiny_bert,
    write_config,
)

from ftjax import train


def _run_fails(workdir, tmp_path) -> str:
    config = small_config(tmp_path / "no-such-model", tmp_path / "no-data")
    with pytest.raises(train.TrainingError) as err:
        train.run(config, workdir)
    return str(err.value)


def test_workdir_that_is_a_file(tmp_path):
    workdir = tmp_path / "run"
    workdir.write_text("not a folder")
    message = _run_fails(workdir, tmp_path)
    assert f"--workdir={workdir}: is a file, not a folder" in message, message
    assert "Nothing was loaded or written; use another --workdir" in message
    assert workdir.read_text() == "not a folder"


def test_workdir_inside_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    workdir = tmp_path / "file" / "run"
    message = _run_fails(workdir, tmp_path)
    assert f"--workdir={workdir}: is inside {tmp_path / 'file'}, which is a file" in message
    assert (tmp_path / "file").read_text() == "x"


def test_read_only_workdir(tmp_path):
    if os.geteuid() == 0:  # root writes through chmod; a read-only mount stops even root
        with small_filesystem(tmp_path / "ro", "1m", read_only=True) as ro:
            message = _run_fails(ro / "run", tmp_path)
            assert f"--workdir={ro / 'run'}: it is on a read-only file system" in message, message
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        message = _run_fails(locked / "run", tmp_path)
    finally:
        locked.chmod(0o700)
    assert f"--workdir={locked / 'run'}: permission denied" in message, message
    assert not (locked / "run").exists()


def test_a_failed_probe_leaves_no_folder_behind(tmp_path, tiny_bert, data_dir):
    # The probe creates the workdir (and its missing parents) and removes them again, so a run
    # that fails later (here: on its plan, after the model loaded) leaves nothing behind.
    workdir = tmp_path / "new" / "deeper" / "run"
    config = small_config(tiny_bert, data_dir, train__steps=8)  # shorter than the plan
    with pytest.raises(Exception, match="longer than the run"):
        train.run(config, workdir)
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed here")
def test_gs_workdir_without_gcsfs_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # pathlib would have made ./gs:/... here
    message = _run_fails("gs://ftjax-test-no-such-bucket/run", tmp_path)
    assert "--workdir=gs://ftjax-test-no-such-bucket/run: a gs:// workdir needs gcsfs" in message
    assert "pip install gcsfs google-cloud-storage" in message, message
    assert not list(tmp_path.iterdir())


def test_garbage_config_json_names_the_file_and_the_way_out(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"model": {"source": "x"')  # cut off mid-write
    before = snapshot(workdir)
    message = _run_fails(workdir, tmp_path)
    assert f"{workdir / 'config.json'} is not a config ftjax wrote" in message, message
    assert "delete it to resume the checkpoints there with this run's config" in message
    assert snapshot(workdir) == before


def test_full_disk_stops_with_one_error_naming_the_last_checkpoint(
    tmp_path, tiny_bert, data_dir, jax_cache
):
    # 7 MB holds config.json, the step-3 checkpoint (~4 MB of tiny BERT) and not best/4.
    config = write_config(tmp_path / "small.py", tiny_bert, data_dir)
    with small_filesystem(tmp_path / "disk", "7m") as disk:
        workdir = disk / "run"
        out = run_cli(config, workdir, jax_cache=jax_cache)
        assert out.returncode != 0
        last = out.stderr.strip().splitlines()[-1]
        assert last == (
            f"ftjax.errors.DiskFullError: disk full at {workdir} (no space left on device while "
            "writing best/4); free space or use another --workdir; the last complete checkpoint "
            "is step 3; rerun the same command to resume from it."
        ), out.stderr[-3000:]
        # orbax's writer threads print their own failures before this line; ftjax's error is last.
        assert checkpoint_steps(workdir) == [3]
        assert json.loads((workdir / "config.json").read_text())["train"]["batch_size"] == 16


def test_probe_error_names_a_full_disk(tmp_path):
    with small_filesystem(tmp_path / "disk", "64k") as disk:
        try:
            with open(disk / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass
        message = _run_fails(disk / "run", tmp_path)
        assert f"--workdir={disk / 'run'}: the disk is full; free space" in message, message


def test_workdir_path_keeps_bucket_urls():
    assert str(train.workdir_path("gs://bucket/runs/a")) == "gs://bucket/runs/a"
    assert str(train.workdir_path(Path("runs/a"))) == "runs/a"
