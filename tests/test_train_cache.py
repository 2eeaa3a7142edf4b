"""`train.cache_features=True` in a real run (tiny BERT, mean pooling): head-only phases train on
cached features, and a phase that trains backbone groups says so in one short line."""

from __future__ import annotations

import json

from train_fixtures import data_dir, small_config, tiny_bert  # noqa: F401  (pytest fixtures)


def test_cached_run_reports_backbone_phases_in_one_short_line(
    tmp_path, tiny_bert, data_dir, capsys
):
    from ftjax import train

    config = small_config(tiny_bert, data_dir, train__cache_features=True)
    results = train.run(config, tmp_path / "run")
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if "without cached features" in x]
    # 'head' trains the head; 'top' (top:2) the unused pooler too; only 'all' trains the backbone.
    assert lines == [
        "phase all: training without cached features "
        "(it trains backbone groups embeddings, layer_0, layer_1 and 1 more)"
    ], out[-3000:]
    assert "augmentation is off" not in out  # text preprocessing is deterministic
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == results
    assert results["test"]["count"] == 64 and 0.0 <= results["test"]["accuracy"] <= 1.0
