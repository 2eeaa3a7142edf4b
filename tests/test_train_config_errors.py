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
        dict(train__best_metric="bleu"),
        cfg_lib.ConfigError,
        ["config.train.best_metric", "'bleu'", "the classification task reports", "'macro_f1'"],
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
    "string_lr_in_preset_args": (
        dict(plan__preset="full_finetune", plan__phases=(), plan__args=dict(lr="1e-3")),
        cfg_lib.ConfigError,
        ["config.plan.args.lr: is '1e-3' (a str); it must be a number", "without quotes"],
    ),
    "string_lr_in_phase": (
        dict(plan__phases=_phases(p1=dict(lr="1e-3"))),
        cfg_lib.ConfigError,
        ["config.plan.phases[1].lr: is '1e-3' (a str); it must be a number"],
    ),
    "string_schedule_value": (
        dict(plan__phases=_phases(p1=dict(schedule=dict(kind="stlr", ratio="eight")))),
        cfg_lib.ConfigError,
        ["config.plan.phases[1].schedule.ratio: is 'eight'", "a number"],
    ),
    "fractional_phase_steps": (
        dict(plan__phases=_phases(p0=dict(steps=4.5))),
        cfg_lib.ConfigError,
        ["config.plan.phases[0].steps: is 4.5", "a whole number"],
    ),
    "string_lr_mult": (
        dict(plan__phases=_phases(p1=dict(lr_mults={"pooler": "0.5"}))),
        cfg_lib.ConfigError,
        ["config.plan.phases[1].lr_mults['pooler']: is '0.5'"],
    ),
    "zero_lr_scale": (
        dict(plan__lr_scale=0.0),
        cfg_lib.ConfigError,
        ["config.plan.lr_scale: is 0.0", "positive factor"],
    ),
    "none_for_a_key_that_needs_a_value": (
        dict(train__batch_size=None),
        cfg_lib.ConfigError,
        ["config.train.batch_size: is None", "default 32"],
    ),
    "zero_max_skipped_steps": (
        dict(train__max_skipped_steps=0),
        cfg_lib.ConfigError,
        ["config.train.max_skipped_steps: is 0", ">= 1"],
    ),
    "unknown_resume_override": (
        dict(train__resume_overrides=("plan.lr_scal",)),
        cfg_lib.ConfigError,
        ["config.train.resume_overrides: names 'plan.lr_scal', which is not a config key"],
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


def test_cli_steps_none_unsets_steps(tmp_path, tiny_bert, data_dir):
    # The config sets train.steps; None unsets it, so epochs decide, and epochs=0 is then the
    # error (it is no error while steps is set): the None arrived.
    config = write_config(tmp_path / "steps.py", tiny_bert, data_dir, train__steps=16)
    workdir = tmp_path / "run"
    out = run_cli(
        config, workdir, "--config.train.steps=None", "--config.train.epochs=0", timeout=300
    )
    assert out.returncode != 0 and not workdir.exists()
    assert "config.train.epochs: is 0.0; give a positive number of epochs" in out.stderr, (
        out.stderr[-2000:]
    )


def test_cli_epochs_while_the_config_sets_steps_says_to_unset_steps(tmp_path, tiny_bert, data_dir):
    config = write_config(tmp_path / "steps.py", tiny_bert, data_dir, train__steps=16)
    workdir = tmp_path / "run"
    out = run_cli(config, workdir, "--config.train.epochs=3", timeout=300)
    assert out.returncode != 0 and not workdir.exists()
    assert (
        "--config.train.epochs=3.0 would be ignored: the config sets train.steps=16, which "
        "decides the run's length. Add --config.train.steps=None to train for epochs instead."
    ) in out.stderr, out.stderr[-2000:]


def test_cli_none_for_a_key_that_needs_a_value(tmp_path, tiny_bert, data_dir):
    output = _cli_fails(tmp_path, tiny_bert, data_dir, "--config.train.batch_size=None")
    assert "config.train.batch_size: is None; it needs a value like its default 32" in output, (
        output[-2000:]
    )


def test_cli_plan_args_lr_on_a_config_of_explicit_phases_points_to_lr_scale(
    tmp_path, tiny_bert, data_dir
):
    output = _cli_fails(tmp_path, tiny_bert, data_dir, "--config.plan.args.lr=1e-4")
    assert "unknown config key config.plan.args.lr" in output, output[-2000:]
    assert "a config with explicit plan.phases has none" in output
    assert "--config.plan.lr_scale=FACTOR" in output


def test_cli_plan_args_lr_on_a_preset_config_and_lr_scale_on_any(tmp_path, tiny_bert, data_dir):
    # Both overrides parse; the run then stops at the bad value given with them, before loading.
    config = write_config(
        tmp_path / "preset.py",
        tiny_bert,
        data_dir,
        plan__phases=(),
        plan__preset="full_finetune",
        plan__args=dict(lr=1e-3),
    )
    for flag in ("--config.plan.args.lr=1e-4", "--config.plan.lr_scale=0.5"):
        out = run_cli(config, tmp_path / "run", flag, "--config.train.nan_policy=bad", timeout=300)
        assert "config.train.nan_policy: is 'bad'" in out.stderr, (flag, out.stderr[-2000:])


def test_lr_scale_multiplies_every_phase_lr_of_presets_and_explicit_phases(tiny_bert, data_dir):
    names = ("embeddings", "layer_0", "layer_1", "pooler", "head")
    explicit = cfg_lib.plan(small_config(tiny_bert, data_dir, plan__lr_scale=0.5), names)
    assert [p.lr for p in explicit.phases] == [0.5 * p["lr"] for p in PHASES]
    preset = small_config(
        tiny_bert,
        data_dir,
        plan__phases=(),
        plan__preset="lp_ft",
        plan__args=dict(lr=1e-3, head_lr=1e-2),
        plan__lr_scale=0.1,
    )
    assert [p.lr for p in cfg_lib.plan(preset, names).phases] == pytest.approx([1e-3, 1e-4])


def test_a_config_built_on_a_missing_file_names_it(tmp_path):
    with pytest.raises(cfg_lib.ConfigError, match=r"config file .*nope.py does not exist"):
        cfg_lib.from_file(tmp_path / "nope.py")
