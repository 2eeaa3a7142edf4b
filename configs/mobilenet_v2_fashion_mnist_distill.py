"""Distil a fine-tuned EfficientNet-Lite0 into MobileNetV2 on Fashion-MNIST.

    python -m ftjax.main --config=configs/effnet_lite0_fashion_mnist.py \
        --workdir=runs/effnet_fmnist_1ep --config.train.epochs=1
    python -m ftjax.main --config=configs/mobilenet_v2_fashion_mnist_distill.py \
        --workdir=runs/mnv2_fmnist_distill --config.distill.teacher=runs/effnet_fmnist_1ep

The teacher is a finished 64-px run of configs/effnet_lite0_fashion_mnist.py (its best checkpoint).
The student is configs/mobilenet_v2_fashion_mnist.py (torchvision's ImageNet MobileNetV2 at its own
mean/std; the teacher gets its own (x - 127) / 128 of the same batch), trained 1 epoch on
(1 - alpha) * CE + alpha * T^2 * KL(teacher || student), T = 2, alpha = 0.5, with the base LP-FT plan.
`--config.distill.teacher=` (empty) trains the same student without a teacher.
Expected: 90.50% test, its 1-epoch teacher 89.03% and the student without one 90.47% (one
seed each, 2026-12-02; experiments/results/compress/effnet_fmnist).
`:quick`: a few steps on a small subset (CI; its teacher any finished effnet run, e.g. `:quick`).
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
