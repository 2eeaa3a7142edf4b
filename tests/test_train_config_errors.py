"""Bad run configs: each is one clear error naming the key (or phase/group) at fault, raised
before anything is written, so the workdir does not exist afterwards.

Most go through `ftjax.train.run` in-process (validation happens before any compilation); the
command-line ones (unknown key, wrong type, a bad value) go through `python -m ftjax.main`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from train_fixtures import PHASES, data_dir, run_cli, small_config, tiny_bert, write_config  # noqa: F401

from ftjax import config as cfg_lib
from ftjax import param_groups, phases, train


def _phases(**changes_by_index) -> tuple[dict, ...]:
    """PHASES with phase i's dict updated by changes_by_index[f'p{i}']."""
    return tuple({**p, **changes_by_index.get(f"p{i}", {})} for i, p in enumerate(PHASES))


# Each case: config overrides ('__' for '.'), the error type, and texts the message must contain.
CASES = {
    "empty_source": (
        dict(model__source=""),
        cfg_lib.ConfigError,
        ["config.model.source", "is empty"],
    ),
    "bad_pooling": (
        dict(model__pooling="max"),
        cfg_lib.ConfigError,
        ["config.model.pooling", "'max'", "'mean'"],
    ),
    "empty_data_name": (dict(data__name=""), cfg_lib.ConfigError, ["config.data.name"]),
    "bad_nan_policy": (
        dict(train__nan_policy="ignore"),
        cfg_lib.ConfigError,
        ["config.train.nan_policy", "'skip'"],
    ),
    "bad_best_metric": (
        dict(train__best_metric="f1"),
        cfg_lib.ConfigError,
        ["config.train.best_metric", "'f1'"],
    ),
    "negative_eval_every": (
        dict(train__eval_every_steps=-1),
        cfg_lib.ConfigError,
        ["config.train.eval_every_steps", "-1", ">= 0"],
    ),
    "zero_batch": (
        dict(train__batch_size=0),
        cfg_lib.ConfigError,
        ["config.train.batch_size", ">= 1"],
    ),
    "bad_optimizer": (
        dict(optim__name="rmsprop"),
        cfg_lib.ConfigError,
        ["config.optim.name", "'adamw'"],
    ),
    "preset_and_phases": (
        dict(plan__preset="full_finetune"),
        cfg_lib.ConfigError,
        ["config.plan", "exactly one of plan.preset", "plan.phases"],
    ),
    "unknown_preset": (
        dict(plan__preset="ulmfit", plan__phases=()),
        cfg_lib.ConfigError,
        ["config.plan.preset", "'ulmfit'", "gradual_unfreezing"],
    ),
    "phase_unknown_key": (
        dict(plan__phases=_phases(p1=dict(learning_rate=1e-3))),
        cfg_lib.ConfigError,
        ["config.plan.phases[1]", "learning_rate"],
    ),
    "schedule_unknown_key": (
        dict(plan__phases=_phases(p1=dict(schedule=dict(kind="stlr", warmup=3)))),
        cfg_lib.ConfigError,
        ["config.plan.phases[1].schedule", "warmup"],
    ),
    "bad_top_n": (
        dict(plan__phases=_phases(p1=dict(trainable="top:9"))),
        cfg_lib.ConfigError,
        ["config.plan.phases[1].trainable", "'top:9'", "1 <= N <= 5"],
    ),
    "unknown_group": (
        dict(plan__phases=_phases(p1=dict(trainable=("head", "decoder")))),
        phases.PlanError,
        ["phase 'top'", "['decoder']", "pooler"],
    ),
    "zero_lr": (
        dict(plan__phases=_phases(p0=dict(lr=0.0))),
        phases.PlanError,
        ["phase 'head'", "lr=0.0"],
    ),
    "plan_longer_than_run": (
        dict(train__steps=8),
        phases.PlanError,
        ["longer than the run", "head=4", "top=6", "8"],
    ),
    "group_matches_nothing": (
        dict(
            groups=(
                ("emb", "embeddings/.*"),
                ("enc", "encoder/.*"),
                ("pool", "pooler/.*"),
                ("decoder", "decoder/.*"),
                ("head", "head/.*"),
            )
        ),
        param_groups.GroupSpecError,
        ["decoder='decoder/.*'", "match no parameter"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_is_one_clear_error_and_writes_nothing(case, tmp_path, tiny_bert, data_dir):
    overrides, error, texts = CASES[case]
    workdir = tmp_path / "run"
    with pytest.raises(error) as err:
        train.run(small_config(tiny_bert, data_dir, **overrides), workdir)
    message = str(err.value)
    for text in texts:
        assert text in message, f"{text!r} not in: {message}"
    assert not workdir.exists()


def _cli_fails(tmp_path: Path, tiny_bert: Path, data_dir: Path, *flags: str) -> str:
    config = write_config(tmp_path / "small.py", tiny_bert, data_dir)
    workdir = tmp_path / "run"
    out = run_cli(config, workdir, *flags, timeout=300)
    assert out.returncode != 0
    assert not workdir.exists()
    return out.stdout + out.stderr


def test_cli_wrong_type_names_the_key(tmp_path, tiny_bert, data_dir):
    output = _cli_fails(tmp_path, tiny_bert, data_dir, "--config.train.batch_size=abc")
    assert "--config.train.batch_size=abc" in output and "invalid literal for int()" in output, (
        output[-2000:]
    )


def test_cli_bad_value_is_validated_before_training(tmp_path, tiny_bert, data_dir):
    output = _cli_fails(tmp_path, tiny_bert, data_dir, "--config.train.nan_policy=ignore")
    assert "config.train.nan_policy: is 'ignore'" in output, output[-2000:]


def test_cli_unknown_key_names_the_key(tmp_path, tiny_bert, data_dir):
    output = _cli_fails(tmp_path, tiny_bert, data_dir, "--config.train.nosuchkey=1")
    assert "train.nosuchkey" in output, output[-2000:]
