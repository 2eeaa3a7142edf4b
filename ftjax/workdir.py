"""The run's workdir: checked and prepared before anything loads, compared with the saved config
on resume, its run files written, and a full disk turned into one error.

A workdir is an `etils.epath.Path`, so `gs://` (and other bucket) workdirs work where the bucket
library is installed and fail early, naming it, where it is not. Not here: checkpoints
(`ftjax.checkpoint`), metric files (`ftjax.metrics`), the loop (`ftjax.train`).
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
from etils import epath

import ftjax
from ftjax import config as cfg_lib
from ftjax.checkpoint import committed_steps
from ftjax.errors import DiskFullError, TrainingError

__all__ = [
    "workdir_path",
    "prepare_workdir",
    "check_workdir",
    "write_run_files",
    "disk_full",
    "disk_full_error",
]


# What to install for a bucket workdir: etils.epath reaches buckets through these, and
# tensorboardX writes its gs:// event files with google-cloud-storage.
_BUCKET_PACKAGES = {"gs": "gcsfs google-cloud-storage", "s3": "s3fs boto3"}


def _config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def workdir_path(workdir: str | os.PathLike) -> epath.Path:
    """`workdir` as an `etils.epath.Path`: a local folder, or a bucket (`gs://b/run` stays one,
    where pathlib would make it the local folder `gs:/b/run`)."""
    return epath.Path(workdir)


def _cannot_use(workdir: epath.Path, problem: str) -> TrainingError:
    return TrainingError(
        f"--workdir={workdir}: {problem}. Nothing was loaded or written; use another --workdir."
    )


def prepare_workdir(workdir: epath.Path) -> None:
    """Checks that `workdir` is (or can be) a folder this process can write, by writing and
    removing a probe file, before anything is loaded; a folder created for the probe is removed
    again, so a run that fails later (e.g. on its plan) leaves nothing behind."""
    scheme = str(workdir).split("://", 1)[0] if "://" in str(workdir) else None
    if scheme:
        packages = _BUCKET_PACKAGES.get(scheme, f"the fsspec file system for {scheme}://")
        try:
            workdir.exists()
        except ImportError as e:
            raise _cannot_use(
                workdir,
                f"a {scheme}:// workdir needs {packages.split()[0]} ({e}); install "
                f"`pip install {packages}`, or use a local folder",
            ) from None
        except Exception as e:  # noqa: BLE001 - credentials, network, a bucket that is not there
            raise _cannot_use(workdir, f"cannot reach it ({type(e).__name__}: {e})") from None
        if scheme == "gs" and importlib.util.find_spec("google.cloud.storage") is None:
            raise _cannot_use(
                workdir,
                "TensorBoard files on gs:// need google-cloud-storage; install "
                f"`pip install {packages}`, or use a local folder",
            )
    created, folder = [], workdir
    probe = workdir / f".ftjax-write-probe-{os.getpid()}-{jax.process_index()}"
    try:
        while not scheme and not folder.exists() and folder != folder.parent:
            created.append(folder)  # a bucket has no folders to create or remove
            folder = folder.parent
        if not scheme and not folder.is_dir():
            what = "is a file" if folder == workdir else f"is inside {folder}, which is a file"
            raise _cannot_use(workdir, f"{what}, not a folder")
        workdir.mkdir(parents=True, exist_ok=True)
        probe.write_text("ftjax checks that the workdir is writable\n")
    except OSError as e:
        reason = {
            errno.ENOSPC: "the disk is full; free space",
            errno.EROFS: "it is on a read-only file system",
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.ENOTDIR: "a part of the path is a file, not a folder",
            errno.EEXIST: "a part of the path is a file, not a folder",
        }.get(e.errno, "it cannot be written")
        raise _cannot_use(
            workdir, f"{reason} ({e.strerror or e}: {e.filename or workdir})"
        ) from None
    except Exception as e:  # noqa: BLE001 - a bucket's errors (credentials, permissions)
        if not scheme:
            raise
        raise _cannot_use(workdir, f"cannot write to it ({type(e).__name__}: {e})") from None
    finally:
        try:
            probe.unlink(missing_ok=True)  # also the empty file a failed write leaves
        except OSError:
            pass
        if jax.process_count() == 1:  # several processes would race to remove a shared folder
            for folder in created:
                try:
                    folder.rmdir()
                except (OSError, ValueError):  # epath says ValueError for a folder not empty
                    break


def _saved_config(file: epath.Path) -> dict[str, Any]:
    try:
        saved = json.loads(file.read_text())
        if not isinstance(saved, dict):
            raise ValueError(f"it holds a {type(saved).__name__}, not an object")
        return saved
    except (ValueError, UnicodeDecodeError) as e:
        raise TrainingError(
            f"{file} is not a config ftjax wrote ({e}). It names the config of the run in "
            f"{file.parent}, so the run cannot be checked against it: restore the file, delete it "
            "to resume the checkpoints there with this run's config, or use a new --workdir."
        ) from None


# Keys that say how a run computes, never what: a resume may change them freely.
_HOW_NOT_WHAT = ("train.resume_overrides", "train.compile_ahead")


def _differs(saved: dict[str, Any], now: dict[str, Any], key: str) -> bool:
    if key in _HOW_NOT_WHAT:
        return False
    if key not in saved:  # a key newer than the workdir: no change while at its default
        return now.get(key) != cfg_lib.flat_keys(_config_json(cfg_lib.defaults())).get(key)
    return saved.get(key) != now.get(key)


def check_workdir(
    workdir: epath.Path, config: ml_collections.ConfigDict
) -> dict[str, tuple[Any, Any]]:
    """Refuses to resume a workdir whose saved config differs from `config` (reads only), except
    in the keys `train.resume_overrides` names; returns those changes as {key: (saved, now)}."""
    saved_file = workdir / "config.json"
    if not saved_file.exists():
        return {}
    saved = cfg_lib.flat_keys(_saved_config(saved_file))
    now = cfg_lib.flat_keys(_config_json(config))
    allowed = cfg_lib.resume_overrides(config)
    changed = sorted(k for k in saved.keys() | now.keys() if _differs(saved, now, k))
    ok = [k for k in changed if any(k == a or k.startswith(a + ".") for a in allowed)]
    refused = [k for k in changed if k not in ok]
    if refused:
        raise TrainingError(
            f"{workdir} holds a run of a different config, so it cannot be resumed:\n"
            + "\n".join(
                f"  {k}: workdir has {saved.get(k, '<unset>')!r}, this run has {now.get(k, '<unset>')!r}"
                for k in refused
            )
            + "\nUse a new --workdir, or rerun with the same config to resume. To resume with "
            "these changes, name the keys that may change: --config.train.resume_overrides="
            + ",".join(dict.fromkeys((*allowed, *refused)))
            + " (the change is printed and logged in run.json and metrics.jsonl)."
        )
    return {k: (saved.get(k), now.get(k)) for k in ok}


def write_run_files(
    workdir: epath.Path,
    config: ml_collections.ConfigDict,
    changes: dict[str, tuple[Any, Any]] | None = None,
) -> None:
    """config.json (this run's config) and run.json (versions, devices, argv and every config
    change a resume was allowed, oldest first)."""
    if jax.process_index() != 0:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    history = []
    if (workdir / "run.json").exists():
        try:
            history = list(json.loads((workdir / "run.json").read_text()).get("config_changes", []))
        except (ValueError, AttributeError):
            history = []  # an unreadable run.json is rewritten below
    if changes:
        history.append(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "changes": {k: {"from": a, "to": b} for k, (a, b) in changes.items()},
                "argv": sys.argv,
            }
        )
    (workdir / "config.json").write_text(json.dumps(_config_json(config), indent=2, sort_keys=True))
    info = {
        "ftjax_version": ftjax.__version__,
        "git_commit": _git_commit(),
        "jax_version": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "argv": sys.argv,
        "config_changes": history,
    }
    (workdir / "run.json").write_text(json.dumps(info, indent=2))


def disk_full(error: BaseException) -> str | None:
    """The 'no space left' error somewhere in `error`'s chain (orbax wraps the OSError of its
    writer threads in other exceptions, or only keeps its text), or None."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        text = str(e)
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or any(
            t in text for t in ("No space left on device", "ENOSPC", "OS error 28")
        ):
            return text.strip().splitlines()[0] if text.strip() else "ENOSPC"
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
    return None


def disk_full_error(workdir: epath.Path, detail: str) -> DiskFullError:
    writing = re.search(r"/((?:best|checkpoints)/\d+)", detail)
    detail = "no space left on device" + (
        f" while writing {writing.group(1)}" if writing else f": {detail[:300]}"
    )
    steps = committed_steps(workdir)
    last = (
        f"the last complete checkpoint is step {steps[-1]}; rerun the same command to resume "
        "from it"
        if steps
        else "no checkpoint is complete yet"
    )
    return DiskFullError(
        f"disk full at {workdir} ({detail}); free space or use another --workdir; {last}."
    )


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(ftjax.__file__).parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
