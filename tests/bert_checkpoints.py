"""Test helper: random-initialised transformers BERT checkpoints written to a folder."""

import json
from pathlib import Path

import torch
import transformers

TINY = dict(
    vocab_size=99,
    hidden_size=48,
    num_hidden_layers=4,
    num_attention_heads=6,
    intermediate_size=80,
    max_position_embeddings=40,
    type_vocab_size=3,
    hidden_act="gelu_new",
    layer_norm_eps=1e-7,
)


def save_random_bert(
    folder: Path,
    *,
    head: str = "",
    fmt: str = "safetensors",
    seed: int = 0,
    **sizes,
) -> torch.nn.Module:
    """A random BertModel (head="") or BertForSequenceClassification ("cls") saved to `folder`.

    `fmt`: "safetensors" (model.safetensors), "zip" or "legacy" (a torch pickle pytorch_model.bin
    in the current or the pre-1.6 non-zip format); config.json beside it.
    """
    torch.manual_seed(seed)
    config = transformers.BertConfig(**{**TINY, **sizes})
    model = (
        transformers.BertForSequenceClassification if head == "cls" else transformers.BertModel
    )(config).eval()
    model.save_pretrained(folder)
    if fmt != "safetensors":
        (Path(folder) / "model.safetensors").unlink()
        torch.save(
            model.state_dict(),
            Path(folder) / "pytorch_model.bin",
            _use_new_zipfile_serialization=fmt == "zip",
        )
    return model


def random_batch(vocab_size: int, batch: int = 3, seq: int = 11, seed: int = 0) -> dict:
    """int64 numpy input_ids / token_type_ids and a padded attention_mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (batch, seq), generator=g)
    types = torch.randint(0, 2, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    for row in range(1, batch):
        mask[row, seq - 3 * row :] = 0  # later rows padded more
    return {
        "input_ids": ids.numpy(),
        "token_type_ids": types.numpy(),
        "attention_mask": mask.numpy(),
    }


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def save_vocab(folder: Path, words: list[str], vocab_size: int, **tokenizer_config) -> Path:
    """A WordPiece vocab.txt of `vocab_size` lines (special tokens, `words`, [unused] filler) in
    `folder`, and a tokenizer_config.json with `tokenizer_config` when any is given."""
    tokens = [*SPECIAL_TOKENS, *words]
    tokens += [f"[unused{i}]" for i in range(vocab_size - len(tokens))]
    assert len(tokens) == vocab_size, (len(tokens), vocab_size)
    path = Path(folder) / "vocab.txt"
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    if tokenizer_config:
        (Path(folder) / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return path
