"""LoRA on MiniLM-L6 for Rotten Tomatoes: the head alone, then rank-8 adapters and the head.

    python -m ftjax.main --config=configs/minilm_rotten_tomatoes_lora.py --workdir=runs/minilm_rt_lora

The default experiment's model and packed data (configs/minilm_rotten_tomatoes.py), with
the encoder frozen throughout: LoRA (rank 8, alpha 16) on every Dense of the six encoder layers
trains beside the head, 2 epochs in all. Trainable: 331,776 adapter params and the head group
(770 head params, plus the pooler's 147,840, which mean pooling never reads) of 23.0M.
Expected: at the ablation sweep's size (2,048 snippets, 1.5 epochs, 3 seeds;
experiments/results/peft/README.md) LoRA ranks 4 and 16 reach 78.75% and 79.85% test against
79.96% for full fine-tuning; this file's own 2-epoch figure is not measured yet. `:quick` runs a
few steps on a small subset (the CI smoke test). Export merged (`--format=hf`) or as a PEFT
adapter (`--format=peft`).
"""

from pathlib import Path

from ftjax.config import from_file

_BASE = Path(__file__).with_name("minilm_rotten_tomatoes.py")


def get_config(arg: str | None = None):
    c = from_file(_BASE, arg)
    c.peft.lora.targets = "all_linear"  # every Dense of the encoder layers
    c.peft.lora.rank, c.peft.lora.alpha = 8, 16.0
    phases = [
        dict(name="head", trainable="head", lr=2e-3, epochs=0.1),
        dict(
            name="lora",
            trainable=["lora", "head"],
            lr=1e-3,
            schedule=dict(kind="warmup_linear", warmup_fraction=0.06),
        ),
    ]
    if arg == "quick":
        phases[0] = dict(phases[0], epochs=None, steps=4)
    c.plan.phases = tuple(phases)
    return c
