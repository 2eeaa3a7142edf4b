"""Test helper: one tiny random-init checkpoint factory per registered architecture.

`FACTORIES[name](folder)` writes a checkpoint of architecture `name` (config.json and a weights
file, in the layout its published checkpoints use) and returns a `Saved`: the folder, the
weights file, the PyTorch reference module and an input batch for it. Sizes are deliberately
odd (hidden sizes, head counts, layer counts, vocabularies) so a transposed or mis-split weight
cannot hide. Built with transformers + torch where transformers has the class (as
bert_checkpoints.py does); EfficientNet-Lite with `efficientnet_lite_pytorch`; MobileNetV2 with
`TorchMobileNetV2` below, a plain-torch copy of torchvision's `mobilenet_v2` (torchvision itself
pins another torch).

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
    "TorchMobileNetV2",
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


# ----------------------------------------------------------------- torchvision's MobileNetV2
# The structure of torchvision/models/mobilenetv2.py (InvertedResidual, MobileNetV2, and
# ops.misc.Conv2dNormActivation: conv with padding (k - 1) // 2 and no bias, BatchNorm2d,
# ReLU6), written out so its state-dict keys and forward are torchvision's.


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # make sure that rounding down does not go down by more than 10%
        new_v += divisor
    return new_v


class _ConvBNReLU6(torch.nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            torch.nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=False),
            torch.nn.BatchNorm2d(cout),
            torch.nn.ReLU6(inplace=True),
        )


class _InvertedResidual(torch.nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        assert stride in (1, 2)
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[torch.nn.Module] = []
        if expand_ratio != 1:
            layers.append(_ConvBNReLU6(inp, hidden_dim, kernel_size=1))  # pw
        layers += [
            _ConvBNReLU6(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),  # dw
            torch.nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),  # pw-linear
            torch.nn.BatchNorm2d(oup),
        ]
        self.conv = torch.nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class TorchMobileNetV2(torch.nn.Module):
    """torchvision's `MobileNetV2(num_classes, width_mult, round_nearest, dropout)`."""

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        round_nearest: int = 8,
        dropout: float = 0.2,
    ):
        super().__init__()
        setting = [
            # t, c, n, s
            [1, 16, 1, 1],
            [6, 24, 2, 2],
            [6, 32, 3, 2],
            [6, 64, 4, 2],
            [6, 96, 3, 1],
            [6, 160, 3, 2],
            [6, 320, 1, 1],
        ]
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[torch.nn.Module] = [_ConvBNReLU6(3, input_channel, stride=2)]
        for t, c, n, s in setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                features.append(_InvertedResidual(input_channel, output_channel, stride, t))
                input_channel = output_channel
        features.append(_ConvBNReLU6(input_channel, self.last_channel, kernel_size=1))
        self.features = torch.nn.Sequential(*features)
        self.classifier = torch.nn.Sequential(
            torch.nn.Dropout(p=dropout), torch.nn.Linear(self.last_channel, num_classes)
        )
        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    torch.nn.init.zeros_(m.bias)
            elif isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(m.weight)
                torch.nn.init.zeros_(m.bias)
            elif isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, 0, 0.01)
                torch.nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(x)
        x = torch.nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


def _randomise_batch_norms(model: torch.nn.Module, seed: int, size: int = 32) -> None:
    """Random batch-norm affine params, and running statistics measured on random images of
    `size` px: a fresh model's 1, 0, 0, 1 would let a swapped mean/var or scale/bias pass, and
    random statistics saturate every ReLU6 within a few blocks (constant logits).

    Scales in [0.5, 1) and offsets in [1, 1.5) keep most ReLU6 units in their linear range.
    With zero-mean offsets this random network is chaotic (a 0.4% change of the input moves the
    logits by ~30%), and bfloat16 rounding alone would swamp the contract test's tolerance; the
    real ImageNet weights are far tamer (bfloat16 within ~5%)."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(0.5 + 0.5 * torch.rand(m.num_features, generator=g))
            m.bias.copy_(1.0 + 0.5 * torch.rand(m.num_features, generator=g))
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batches
        model.train()
        for _ in range(4):
            model(torch.randn((8, 3, size, size), generator=g))
        for m in norms:
            m.momentum = 0.1
    model.eval()


def save_mobilenet_v2(folder: Path, seed: int = 0, width_mult: float = 0.6) -> Saved:
    """A random torchvision MobileNetV2 at width 0.6 (stem 24, blocks 16..192: the rounding's 10%
    rule bumps several widths) with random batch-norm statistics, saved as torchvision's files
    are: a bare .pth state dict and no config.json, at 32 px."""
    torch.manual_seed(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = TorchMobileNetV2(num_classes=7, width_mult=width_mult)
    _randomise_batch_norms(model, seed + 1)
    loud(model.classifier[1], seed=seed + 2)
    model.eval()
    weights = folder / "mobilenet_v2-random.pth"
    torch.save(model.state_dict(), weights)
    return Saved(folder, weights, model, image_batch(32))


def save_convnext(folder: Path, seed: int = 0, **sizes: Any) -> Saved:
    """A ConvNextModel with odd widths, uneven depths, layer scale 0.4, stochastic depth 0.1 and
    random LayerNorm affine params, layer scales and biases (their 1 / 0 / constant init would
    let a swapped or dropped one pass), at 40 px."""
    torch.manual_seed(seed)
    config = transformers.ConvNextConfig(
        **{
            **dict(
                hidden_sizes=[12, 20, 28, 36],
                depths=[1, 2, 1, 1],
                layer_scale_init_value=0.4,
                drop_path_rate=0.1,
                initializer_range=0.1,
                image_size=40,
            ),
            **sizes,
        }
    )
    model = transformers.ConvNextModel(config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:  # LayerNorm weights and layer scales
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    return _save_hf(model, folder, image_batch(config.image_size))


def save_dinov2(
    folder: Path,
    seed: int = 0,
    registers: int = 0,
    head: bool = False,
    crop_size: int | None = None,
    **sizes: Any,
) -> Saved:
    """A Dinov2Model (with `registers`, Dinov2WithRegistersModel; with `head`, the
    *ForImageClassification class, 5 labels, O(1) logits) of odd sizes: hidden 27 over 3 heads,
    3 layers, patch 4 at 28 px (a 7 x 7 grid), stochastic depth 0.1, with random LayerNorm affine
    params, layer scales, biases and register tokens (their 1 / 0 / constant init would let a
    swapped or dropped one pass). With `crop_size`, a preprocessor_config.json cropping to it, as
    the hub's DINOv2 checkpoints ship (518 px config, 224 px crop): runs default to that size."""
    torch.manual_seed(seed)
    fields = {
        **dict(
            hidden_size=27,
            num_hidden_layers=3,
            num_attention_heads=3,
            mlp_ratio=2,
            image_size=28,
            patch_size=4,
            layerscale_value=0.4,
            drop_path_rate=0.1,
            initializer_range=0.1,
        ),
        **sizes,
    }
    if registers:
        config = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **fields)
        classes = (
            transformers.Dinov2WithRegistersModel,
            transformers.Dinov2WithRegistersForImageClassification,
        )
    else:
        config = transformers.Dinov2Config(**fields)
        classes = (transformers.Dinov2Model, transformers.Dinov2ForImageClassification)
    if head:
        config.num_labels = 5
    model = classes[head](config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith("register_tokens"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:  # LayerNorm weights and layer scales
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    if head:
        loud(model.classifier, seed=seed + 2)
    saved = _save_hf(model, folder, image_batch(crop_size or config.image_size))
    if crop_size:
        processor = {
            "image_processor_type": "BitImageProcessor",
            "crop_size": {"height": crop_size, "width": crop_size},
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225],
        }
        (Path(folder) / "preprocessor_config.json").write_text(json.dumps(processor))
    return saved


def save_dinov2_with_registers(folder: Path, seed: int = 0, **sizes: Any) -> Saved:
    """`save_dinov2` with 2 register tokens."""
    return save_dinov2(folder, seed, **{"registers": 2, **sizes})


def save_deberta_v2(folder: Path, seed: int = 0, head: bool = False, **sizes: Any) -> Saved:
    """A DebertaV2Model (DebertaV2ForSequenceClassification with head=True) in DeBERTa-v3's
    layout: relative attention (c2p and p2c) over 8 log buckets laid out for distances up to 10
    (the 13-token batch reaches the log buckets), shared attention keys, LayerNorm-ed relative
    embeddings, no absolute positions, no token types. Odd sizes, init std 0.2 (at 0.02 the
    attention is uniform and the position terms would hardly show), random LayerNorm affine
    params and biases."""
    torch.manual_seed(seed)
    config = transformers.DebertaV2Config(
        **{
            **dict(
                vocab_size=150,
                hidden_size=36,
                num_hidden_layers=3,
                num_attention_heads=3,
                intermediate_size=50,
                max_position_embeddings=40,
                type_vocab_size=0,
                position_biased_input=False,
                relative_attention=True,
                position_buckets=8,
                max_relative_positions=10,
                pos_att_type="p2c|c2p",
                share_att_key=True,
                norm_rel_ebd="layer_norm",
                initializer_range=0.2,
                pad_token_id=0,
                num_labels=4,
            ),
            **sizes,
        }
    )
    cls = transformers.DebertaV2ForSequenceClassification if head else transformers.DebertaV2Model
    model = cls(config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:  # LayerNorm weights
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    return _save_hf(model, folder, text_batch(config.vocab_size))


FACTORIES: dict[str, Callable[..., Saved]] = {
    "albert": save_albert,
    "bert": save_bert,
    "convnext": save_convnext,
    "deberta_v2": save_deberta_v2,
    "dinov2": save_dinov2,
    "dinov2_with_registers": save_dinov2_with_registers,
    "distilbert": save_distilbert,
    "efficientnet_lite": save_efficientnet_lite,
    "electra": save_electra,
    "mobilenet_v2": save_mobilenet_v2,
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
