"""`train.every_phase_end=False` in a real run (tiny BERT, phases ending at steps 4, 10 and 16):
validation and checkpoints come at their intervals and the run's last step only, so schedules with
different phase counts validate at the same steps."""

from __future__ import annotations

from train_fixtures import (  # noqa: F401  (pytest fixtures)
    checkpoint_steps,
    data_dir,
    read_jsonl,
    small_config,
    tiny_bert,
)


def test_without_phase_end_milestones_a_run_validates_and_checkpoints_at_intervals_only(
    tmp_path, tiny_bert, data_dir
):
    from ftjax import train

    workdir = tmp_path / "run"
    config = small_config(
        tiny_bert,
        data_dir,
        train__every_phase_end=False,
        train__checkpoint_every_steps=0,
        train__keep_checkpoints=5,
    )
    results = train.run(config, workdir)
    rows = read_jsonl(workdir / "metrics.jsonl")
    validated = [r["step"] for r in rows if r["split"] == "validation"]
    assert validated == [6, 12, 16]  # with phase ends: 4, 6, 10, 12, 16
    assert checkpoint_steps(workdir) == [16]
    assert results["best_step"] in validated
