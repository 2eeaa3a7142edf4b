"""Distil a fine-tuned EfficientNet-Lite0 into MobileNetV2 on Fashion-MNIST.

    python -m ftjax.main --config=configs/effnet_lite0_fashion_mnist.py \
        --workdir=runs/effnet_fmnist_1ep --config.train.epochs=1
    python -m ftjax.main --config=configs/mobilenet_v2_fashion_mnist_distill.py \
        --workdir=runs/mnv2_fmnist_distill --config.distill.teacher=runs/effnet_fmnist_1ep

The teacher is a finished run of configs/effnet_lite0_fashion_mnist.py at 64 px (its best
checkpoint; 1 epoch for the measured figure). The student is configs/mobilenet_v2_fashion_mnist.py
(torchvision's ImageNet MobileNetV2, its own ImageNet mean/std: the teacher is fed its own
(x - 127) / 128 pixels from the same batch), trained for 1 epoch on (1 - alpha) * cross-entropy
+ alpha * T^2 * KL(teacher || student) at T = 2, alpha = 0.5, with the base config's LP-FT plan.
`--config.distill.teacher=` (empty) trains the same student without a teacher.
Expected: see experiments/results/compress/effnet_fmnist (one seed, 2026-12-02).
`:quick` runs a few steps on a small subset (the CI smoke test; its teacher is any finished run of
configs/effnet_lite0_fashion_mnist.py, e.g. its `:quick`).
"""

from pathlib import Path

from ftjax.config import from_file

_BASE = Path(__file__).with_name("mobilenet_v2_fashion_mnist.py")


def get_config(arg: str | None = None):
    c = from_file(_BASE, arg)
    c.distill.teacher = "runs/effnet_fmnist_1ep"
    c.distill.temperature, c.distill.alpha = 2.0, 0.5
    if arg != "quick":
        c.train.epochs = 1.0
    return c
