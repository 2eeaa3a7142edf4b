"""Each text encoder added for issue 20 fine-tunes end to end through `python -m ftjax.main`: a
tiny random checkpoint with its own tokenizer.json (trained on the data) on a tiny text CSV, a
head phase (on cached features) then all layers, a few steps each. Slow: one CLI run per architecture."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from arch_checkpoints import (
    save_albert,
    save_bpe_tokenizer,
    save_deberta_v2,
    save_distilbert,
    save_electra,
    save_roberta,
    save_unigram_tokenizer,
    save_wordpiece_tokenizer,
)
from train_fixtures import jax_cache, read_jsonl, run_cli, write_config  # noqa: F401  (fixtures)

GOOD = ["great", "moving", "sharp", "warm", "funny", "brilliant", "charming", "tender"]
BAD = ["dull", "wooden", "empty", "tedious", "flat", "clumsy", "bland", "noisy"]
NOUNS = ["film", "story", "cast", "script", "ending", "score", "plot", "pace"]

# architecture -> (tokenizer.json writer of its tokenizer kind, checkpoint factory)
CASES = {
    "roberta": (save_bpe_tokenizer, save_roberta),
    "distilbert": (save_wordpiece_tokenizer, save_distilbert),
    "electra": (save_wordpiece_tokenizer, save_electra),
    "albert": (save_unigram_tokenizer, save_albert),
    "deberta_v2": (save_unigram_tokenizer, save_deberta_v2),
}
PHASES = (
    dict(name="head", trainable="head", lr=1e-2, steps=2),
    dict(name="all", trainable="all", lr=1e-3, layerwise_decay=0.8),
)


def _reviews(n: int = 64) -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = rng.choice(GOOD if i % 2 else BAD, 2, replace=False)
        rows.append((f"the {rng.choice(NOUNS)} is {words[0]} and {words[1]}.", label))
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(CASES))
def test_text_encoder_fine_tunes_through_the_cli(arch, tmp_path, jax_cache):
    rows = _reviews()
    data = tmp_path / "reviews.csv"
    with data.open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    save_tokenizer, save_checkpoint = CASES[arch]
    vocab = save_tokenizer(model_dir, [text for text, _ in rows])
    save_checkpoint(model_dir, vocab_size=vocab)
    config = write_config(
        tmp_path / "config.py",
        model_dir,
        tmp_path,
        model__pooling="cls",
        data__name="csv",
        data__path=str(data),
        data__max_length=16,
        data__train_examples=None,
        data__eval_examples=None,
        train__batch_size=8,
        train__eval_batch_size=16,
        train__epochs=1.0,
        train__eval_every_steps=3,
        train__checkpoint_every_steps=3,
        train__log_every_steps=1,
        plan__phases=PHASES,
        train__cache_features=True,  # the head phase on cached features: the new heads cache
    )
    workdir = tmp_path / "run"
    out = run_cli(config, workdir, jax_cache=jax_cache, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    log = out.stdout + out.stderr
    assert "caching features for head" in log
    assert "phase head: training without cached features" not in log

    results = json.loads((workdir / "results.json").read_text())
    assert math.isfinite(results["test"]["loss"]) and results["test"]["count"] > 0
    assert 0 <= results["test"]["accuracy"] <= 1
    train = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]
    assert train and all(math.isfinite(r["loss"]) for r in train)
    assert results["steps"] == max(r["step"] for r in train) >= 4  # both phases ran
