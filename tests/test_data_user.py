"""Users' own files: CSV/TSV/JSONL and image folders, fixed-seed splits, and one clear error per bad input."""

import json

import numpy as np
import pytest

from ftjax.data import DataConfig, load_records


def _rows(n=40):
    return [(f"text number {i}, with a comma", "pos" if i % 2 else "neg") for i in range(n)]


def _write_csv(path, rows, header="text,label", sep=","):
    quote = (lambda t: f'"{t}"') if sep == "," else (lambda t: t)
    path.write_text("\n".join([header] + [f"{quote(t)}{sep}{y}" for t, y in rows]) + "\n")
    return path


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl"])
def test_text_file_formats_split_with_fixed_seed(tmp_path, suffix):
    path = tmp_path / f"data.{suffix}"
    if suffix == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in _rows()))
    else:
        _write_csv(
            path,
            _rows(),
            header="text\tlabel" if suffix == "tsv" else "text,label",
            sep="\t" if suffix == "tsv" else ",",
        )
    data = load_records(DataConfig(name="csv", path=str(path)))
    assert data.class_names == ["neg", "pos"] and data.kind == "text"
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sizes == {"train": 28, "validation": 4, "test": 8}
    texts = {k: {v[i]["text"] for i in range(len(v))} for k, v in data.splits.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]
    assert len(texts["train"] | texts["validation"] | texts["test"]) == 40
    again = load_records(DataConfig(name="csv", path=str(path)))
    assert [again.splits["test"][i]["text"] for i in range(8)] == [
        data.splits["test"][i]["text"] for i in range(8)
    ]
    other = load_records(DataConfig(name="csv", path=str(path), seed=1))
    assert {other.splits["test"][i]["text"] for i in range(8)} != texts["test"]
    assert np.bincount(data.splits["test"].labels()).tolist() == [4, 4]  # stratified


def test_explicit_test_file_and_numeric_labels(tmp_path):
    rows = [(f"t{i}", str(i % 11)) for i in range(121)]
    train = _write_csv(tmp_path / "train.csv", rows)
    test = _write_csv(tmp_path / "test.csv", rows[:11])
    data = load_records(DataConfig(name="csv", path=str(train), test_path=str(test)))
    assert data.class_names == [str(i) for i in range(11)]  # numeric order: "10" after "9"
    assert (
        len(data.splits["test"]) == 11
        and len(data.splits["train"]) + len(data.splits["validation"]) == 121
    )


def test_malformed_row_names_file_and_line(tmp_path):
    path = _write_csv(tmp_path / "bad.csv", _rows(5))
    path.write_text(path.read_text() + 'oops,"pos",extra\n')
    with pytest.raises(ValueError, match=r"bad\.csv, line 7: 3 fields where the header has 2"):
        load_records(DataConfig(name="csv", path=str(path)))


def test_malformed_jsonl_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: not valid JSON"):
        load_records(DataConfig(name="csv", path=str(path)))


def test_missing_label_column(tmp_path):
    path = _write_csv(tmp_path / "d.csv", _rows(), header="text,sentiment")
    with pytest.raises(
        ValueError, match=r"no column 'label'; columns are \['text', 'sentiment'\].*label_key"
    ):
        load_records(DataConfig(name="csv", path=str(path)))


def test_label_only_in_test_split(tmp_path):
    train = _write_csv(tmp_path / "train.csv", _rows())
    test = _write_csv(tmp_path / "test.csv", [("new", "neutral"), ("x", "pos")])
    with pytest.raises(
        ValueError,
        match=r"labels \['neutral'\] appear in the test split .*test\.csv.* never in train",
    ):
        load_records(DataConfig(name="csv", path=str(train), test_path=str(test)))


def test_empty_split(tmp_path):
    train = _write_csv(tmp_path / "train.csv", _rows())
    val = _write_csv(tmp_path / "val.csv", [])
    with pytest.raises(ValueError, match=r"validation split .*val\.csv.* has no examples"):
        load_records(DataConfig(name="csv", path=str(train), validation_path=str(val)))


def test_image_folder_without_images(tmp_path):
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(
        ValueError, match=r"image folder .*imgs has no images: expected one subfolder per class"
    ):
        load_records(DataConfig(name="image_folder", path=str(tmp_path / "imgs")))
    assert sorted(p.name for p in (tmp_path / "imgs" / "cat").iterdir()) == [
        "notes.txt"
    ]  # nothing written


def _write_pngs(folder, n, seed=0):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 256, (10, 12), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:03d}.png")


def test_csv_with_one_class_only(tmp_path):
    path = _write_csv(tmp_path / "one.csv", [(f"text {i}", "pos") for i in range(20)])
    with pytest.raises(
        ValueError,
        match=r"one\.csv: all 20 training examples have the same label \(column 'label'\) 'pos'; "
        r"a classifier needs at least 2 classes",
    ):
        load_records(DataConfig(name="csv", path=str(path)))


def test_image_folder_with_one_class_only(tmp_path):
    _write_pngs(tmp_path / "imgs" / "cat", 6)
    with pytest.raises(
        ValueError, match=r"imgs: all 6 training examples have the same class folder 'cat'"
    ):
        load_records(DataConfig(name="image_folder", path=str(tmp_path / "imgs")))


def test_rows_with_empty_label_name_the_lines_and_file(tmp_path):
    rows = _rows(12)
    rows[2] = ("no label here", "")
    rows[7] = ("nor here", "  ")
    path = _write_csv(tmp_path / "gaps.csv", rows)
    with pytest.raises(
        ValueError,
        match=r"gaps\.csv: 2 of 12 rows have an empty label \(lines 4, 9\); fill in their labels",
    ):
        load_records(DataConfig(name="csv", path=str(path)))


def test_jsonl_rows_with_null_label(tmp_path):
    path = tmp_path / "gaps.jsonl"
    lines = [{"text": t, "label": y} for t, y in _rows(6)]
    lines[4]["label"] = None
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(
        ValueError, match=r"gaps\.jsonl: 1 of 6 rows have an empty label \(line 5\)"
    ):
        load_records(DataConfig(name="csv", path=str(path)))


def test_non_utf8_csv_names_file_line_and_fix(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nfine,pos\ncaf\u00e9 cr\u00e8me,neg\n".encode("latin-1") * 1)
    with pytest.raises(
        ValueError,
        match=r"latin1\.csv is not UTF-8 text: byte 0xe9 on line 3 .*re-save it as UTF-8",
    ):
        load_records(DataConfig(name="csv", path=str(path)))


def test_utf8_bom_csv_reads_first_column(tmp_path):
    path = tmp_path / "excel.csv"
    body = "\n".join(["text,label"] + [f"t{i},{'pos' if i % 2 else 'neg'}" for i in range(20)])
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    data = load_records(DataConfig(name="csv", path=str(path)))
    texts = {data.splits[s][i]["text"] for s in data.splits for i in range(len(data.splits[s]))}
    assert texts == {f"t{i}" for i in range(20)} and data.class_names == ["neg", "pos"]


def test_empty_class_folder_is_dropped_with_a_warning(tmp_path):
    for name in ("cat", "dog"):
        _write_pngs(tmp_path / "imgs" / name, 10)
    (tmp_path / "imgs" / "bird").mkdir()
    with pytest.warns(
        UserWarning, match=r"class folder\(s\) bird hold no .* files and are left out"
    ):
        data = load_records(DataConfig(name="image_folder", path=str(tmp_path / "imgs")))
    assert data.class_names == ["cat", "dog"]


def test_corrupt_image_is_found_when_the_folder_is_read(tmp_path):
    for name in ("cat", "dog"):
        _write_pngs(tmp_path / "imgs" / name, 10)
    bad = tmp_path / "imgs" / "dog" / "004.png"
    bad.write_bytes(bad.read_bytes()[:-30])  # cut short, as an interrupted copy leaves it
    (tmp_path / "imgs" / "cat" / "x.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(
        ValueError,
        match=r"imgs: 2 of 21 image files cannot be read: .*cat/x\.jpg \(UnidentifiedImageError.*"
        r"dog/004\.png \(OSError: .*Replace or delete those files",
    ):
        load_records(DataConfig(name="image_folder", path=str(tmp_path / "imgs")))
