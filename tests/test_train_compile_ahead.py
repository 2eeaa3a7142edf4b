"""`train.compile_ahead=True` in a real run (tiny BERT, three phases): each next phase compiles on
a background thread while the current one trains, and the run's results are those of a run
without it."""

from __future__ import annotations

import json

from train_fixtures import data_dir, small_config, tiny_bert  # noqa: F401  (pytest fixtures)


def test_a_run_compiled_ahead_gives_the_results_of_one_compiled_at_each_phase(
    tmp_path, tiny_bert, data_dir
):
    from ftjax import train

    results = {}
    for ahead in (False, True):
        config = small_config(tiny_bert, data_dir, train__compile_ahead=ahead)
        results[ahead] = train.run(config, tmp_path / f"ahead_{ahead}")
    assert results[True]["test"] == results[False]["test"]
    val = {
        ahead: [
            row
            for line in (tmp_path / f"ahead_{ahead}" / "metrics.jsonl").read_text().splitlines()
            if (row := json.loads(line))["split"] == "validation"
        ]
        for ahead in results
    }
    assert len(val[True]) >= 3 and val[True] == val[False]
