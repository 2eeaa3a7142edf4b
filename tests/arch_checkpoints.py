"""Test helper: one tiny random-init checkpoint factory per registered architecture.

`FACTORIES[name](folder)` writes a checkpoint of architecture `name` (config.json and a weights
file, in the layout its published checkpoints use) and returns a `Saved`: the folder, the
weights file, the PyTorch reference module and an input batch for it. Sizes are deliberately
odd (hidden sizes, head counts, layer counts, vocabularies) so a transposed or mis-split weight
cannot hide. Built with transformers + torch where transformers has the class (as
bert_checkpoints.py does); EfficientNet-Lite with `efficientnet_lite_pytorch`.

`tests/test_architectures.py` runs the contract over every registered architecture and fails
for one that has no factory here: adding an architecture means adding its factory.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

__all__ = [
    "Saved",
    "FACTORIES",
    "save_with_head",
    "text_batch",
    "image_batch",
    "loud",
    "save_bpe_tokenizer",
    "save_wordpiece_tokenizer",
    "save_unigram_tokenizer",
]


@dataclasses.dataclass
class Saved:
    folder: Path
    weights: Path
    reference: torch.nn.Module
    batch: dict[str, np.ndarray]


def text_batch(
    vocab_size: int, *, batch: int = 3, seq: int = 13, pad_id: int = 0, low: int = 5, seed: int = 0
) -> dict[str, np.ndarray]:
    """int64 ids in [low, vocab) (clear of the special tokens), later rows padded more with
    `pad_id` and masked, token types 0 (the first segment, what single-text inputs use)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(low, vocab_size, (batch, seq))
    mask = np.ones((batch, seq), np.int64)
    for row in range(1, batch):
        mask[row, seq - 3 * row :] = 0
    ids = np.where(mask > 0, ids, pad_id)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def image_batch(size: int, n: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(seed).standard_normal((n, size, size, 3), np.float32)}


def loud(*linears: torch.nn.Linear, seed: int = 1) -> None:
    """Re-draw these (random-init head) layers' weights at std 1 / sqrt(fan in), so that
    logits are O(1) and an absolute tolerance on them means something (a 0.02-init head gives
    logits ~1e-3)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in linears:
            fan_in = layer.weight.shape[1]
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) / fan_in**0.5)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.1)


def _save_hf(model: torch.nn.Module, folder: Path, batch) -> Saved:
    model.eval().save_pretrained(folder)
    return Saved(Path(folder), Path(folder) / "model.safetensors", model, batch)


def save_bert(folder: Path, seed: int = 0, **sizes: Any) -> Saved:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        **{
            **dict(
                vocab_size=101,
                hidden_size=42,
                num_hidden_layers=2,
                num_attention_heads=7,
                intermediate_size=74,
                max_position_embeddings=40,
                type_vocab_size=3,
                hidden_act="gelu_new",
            ),
            **sizes,
        }
    )
    model = transformers.BertModel(config)
    return _save_hf(model, folder, text_batch(config.vocab_size))


def save_roberta(
    folder: Path, seed: int = 0, head: bool = False, xlm: bool = False, **sizes: Any
) -> Saved:
    """A RobertaModel (or RobertaForSequenceClassification with head=True; XLM-R classes with
    xlm=True) with odd sizes and pad_token_id 1 as the published files have it."""
    torch.manual_seed(seed)
    cls = transformers.XLMRobertaConfig if xlm else transformers.RobertaConfig
    config = cls(
        **{
            **dict(
                vocab_size=113,
                hidden_size=45,
                num_hidden_layers=2,
                num_attention_heads=5,
                intermediate_size=67,
                max_position_embeddings=34,
                type_vocab_size=1,
                pad_token_id=1,
                bos_token_id=0,
                eos_token_id=2,
                layer_norm_eps=1e-5,
                num_labels=4,
            ),
            **sizes,
        }
    )
    if xlm:
        model_cls = (
            transformers.XLMRobertaForSequenceClassification
            if head
            else transformers.XLMRobertaModel
        )
    else:
        model_cls = (
            transformers.RobertaForSequenceClassification if head else transformers.RobertaModel
        )
    model = model_cls(config)
    return _save_hf(model, folder, text_batch(config.vocab_size, pad_id=config.pad_token_id))


def save_distilbert(folder: Path, seed: int = 0, head: bool = False, **sizes: Any) -> Saved:
    """A DistilBertModel (DistilBertForSequenceClassification with head=True), odd sizes."""
    torch.manual_seed(seed)
    config = transformers.DistilBertConfig(
        **{
            **dict(
                vocab_size=97,
                dim=39,
                n_layers=2,
                n_heads=3,
                hidden_dim=61,
                max_position_embeddings=30,
                activation="gelu",
                num_labels=4,
            ),
            **sizes,
        }
    )
    cls = transformers.DistilBertForSequenceClassification if head else transformers.DistilBertModel
    return _save_hf(cls(config), folder, text_batch(config.vocab_size))


def save_electra(folder: Path, seed: int = 0, head: str = "", **sizes: Any) -> Saved:
    """An ElectraModel with embedding_size != hidden_size (head="pretraining": the published
    discriminator class, ElectraForPreTraining; "cls": ElectraForSequenceClassification)."""
    torch.manual_seed(seed)
    config = transformers.ElectraConfig(
        **{
            **dict(
                vocab_size=89,
                embedding_size=22,
                hidden_size=36,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=53,
                max_position_embeddings=30,
                type_vocab_size=2,
                num_labels=4,
            ),
            **sizes,
        }
    )
    cls = {
        "": transformers.ElectraModel,
        "pretraining": transformers.ElectraForPreTraining,
        "cls": transformers.ElectraForSequenceClassification,
    }[head]
    return _save_hf(cls(config), folder, text_batch(config.vocab_size))


def save_albert(folder: Path, seed: int = 0, head: bool = False, **sizes: Any) -> Saved:
    """An AlbertModel (AlbertForSequenceClassification with head=True), odd sizes; the default
    has one shared group of one layer applied 3 times, as the published models do (12 times)."""
    torch.manual_seed(seed)
    config = transformers.AlbertConfig(
        **{
            **dict(
                vocab_size=83,
                embedding_size=14,
                hidden_size=30,
                num_hidden_layers=3,
                num_hidden_groups=1,
                inner_group_num=1,
                num_attention_heads=5,
                intermediate_size=41,
                max_position_embeddings=30,
                type_vocab_size=2,
                hidden_dropout_prob=0.1,
                num_labels=4,
            ),
            **sizes,
        }
    )
    cls = transformers.AlbertForSequenceClassification if head else transformers.AlbertModel
    return _save_hf(cls(config), folder, text_batch(config.vocab_size))


def save_vit(folder: Path, seed: int = 0, **sizes: Any) -> Saved:
    torch.manual_seed(seed)
    config = transformers.ViTConfig(
        **{
            **dict(
                hidden_size=30,
                num_hidden_layers=2,
                num_attention_heads=5,
                intermediate_size=38,
                image_size=24,
                patch_size=8,
                layer_norm_eps=1e-6,
                hidden_dropout_prob=0.1,
            ),
            **sizes,
        }
    )
    model = transformers.ViTModel(config, add_pooling_layer=False)
    return _save_hf(model, folder, image_batch(config.image_size))


def save_resnet(folder: Path, seed: int = 0, **sizes: Any) -> Saved:
    torch.manual_seed(seed)
    config = transformers.ResNetConfig(
        **{
            **dict(
                embedding_size=12,
                hidden_sizes=[12, 20],
                depths=[1, 2],
                layer_type="basic",
            ),
            **sizes,
        }
    )
    model = transformers.ResNetModel(config)
    return _save_hf(model, folder, image_batch(32))


def save_efficientnet_lite(folder: Path, seed: int = 0) -> Saved:
    """A random efficientnet-lite0 scaled to half width and depth, in the packages' layout: a
    .pth state dict named like theirs and a config.json naming the variant and sizes, at 32 px."""
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scaled = dict(width_coefficient=0.5, depth_coefficient=0.5)  # 10 blocks: quick to compile
    model = EfficientNet.from_name("efficientnet-lite0", **scaled).eval()
    weights = folder / "efficientnet-lite0-random.pth"
    torch.save(model.state_dict(), weights)
    config = {"variant": "efficientnet-lite0", "image_size": 32, **scaled}
    (folder / "config.json").write_text(json.dumps(config))
    return Saved(folder, weights, model, image_batch(32))


FACTORIES: dict[str, Callable[..., Saved]] = {
    "albert": save_albert,
    "bert": save_bert,
    "distilbert": save_distilbert,
    "efficientnet_lite": save_efficientnet_lite,
    "electra": save_electra,
    "resnet": save_resnet,
    "roberta": save_roberta,
    "vit": save_vit,
}


def save_bpe_tokenizer(folder: Path, texts: list[str], vocab_size: int = 300) -> int:
    """A byte-level BPE tokenizer.json trained on `texts` with RoBERTa's special tokens
    (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4) and post-processor; returns its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer.save(str(Path(folder) / "tokenizer.json"))
    return tokenizer.get_vocab_size()


def save_wordpiece_tokenizer(folder: Path, texts: list[str], vocab_size: int = 200) -> int:
    """A BERT-style WordPiece tokenizer.json trained on `texts` ([PAD]=0, [UNK]=1, [CLS]=2,
    [SEP]=3, [MASK]=4; "[CLS] $A [SEP]"); returns its vocab size."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tokenizer.save(str(Path(folder) / "tokenizer.json"))
    return tokenizer.get_vocab_size()


def save_unigram_tokenizer(folder: Path, texts: list[str], vocab_size: int = 150) -> int:
    """An ALBERT-style SentencePiece Unigram tokenizer.json trained on `texts` (<pad>=0, <unk>=1,
    [CLS]=2, [SEP]=3, [MASK]=4; "[CLS] $A [SEP]"); returns its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(
        texts,
        trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>"),
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tokenizer.save(str(Path(folder) / "tokenizer.json"))
    return tokenizer.get_vocab_size()


def save_with_head(
    name: str, folder: Path, model_class: str, seed: int = 0, **config: Any
) -> Saved:
    """Text architecture `name`'s tiny checkpoint (`FACTORIES[name]`'s sizes and batch) re-made
    as transformers' task class `model_class` ("BertForTokenClassification", ...), `config`
    (num_labels, problem_type) set on its config: the files a fine-tuned task model leaves, task
    head included and, for the token-level classes, no pooler."""
    base = FACTORIES[name](folder, seed=seed)
    task_config = copy.deepcopy(base.reference.config)
    for key, value in config.items():
        setattr(task_config, key, value)
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(task_config)
    return _save_hf(model, folder, base.batch)
