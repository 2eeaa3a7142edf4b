"""Fixed-seed stratified train/test splits that reproduce scikit-learn's `train_test_split`.

`stratified_split(labels, test_fraction, seed)` returns the same index sets, in the same order, as
`sklearn.model_selection.train_test_split(np.arange(n), test_size=test_fraction, random_state=seed,
stratify=labels)`, without making scikit-learn a runtime dependency (a test checks the equality).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["stratified_split", "train_validation_test"]


def _approximate_mode(
    class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState
) -> np.ndarray:
    """Per-class draw counts proportional to class sizes; ties broken with `rng` (as sklearn does)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (train_indices, test_indices) of a stratified shuffle split with `seed`."""
    labels = np.asarray(labels)
    n = len(labels)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    classes, y_indices, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    if class_counts.min() < 2 or n_train < len(classes) or n_test < len(classes):
        raise ValueError(
            f"cannot split {n} examples with {len(classes)} classes (smallest class has {class_counts.min()}) "
            f"into a stratified {1 - test_fraction:.0%}/{test_fraction:.0%} split: every class needs at least 2 "
            "examples and each side at least one per class; add data or give the splits explicitly"
        )
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        permuted = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(permuted[: n_i[i]])
        test.extend(permuted[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def train_validation_test(
    labels: np.ndarray, test_fraction: float, validation_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Split into test (fraction of all), then validation (fraction of the rest), both stratified."""
    labels = np.asarray(labels)
    rest, test = stratified_split(labels, test_fraction, seed)
    train_pos, val_pos = stratified_split(labels[rest], validation_fraction, seed)
    return {"train": rest[train_pos], "validation": rest[val_pos], "test": test}
