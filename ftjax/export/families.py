"""What each architecture's run becomes in PyTorch: the class names, the head's keys, the config.

The backbone's keys are not here: they come from inverting the architecture's own key rules
(`ftjax.pretrained.arch_*`, see `state_dict.py`). This table holds only what those rules leave
out, per architecture: the task class name prefix (`Bert` -> `BertForSequenceClassification`),
where ftjax's example-level head sits in that class (one Dense for BERT/ALBERT/ViT/DINOv2/ResNet,
the two-layer `dense`/`out_proj` head for RoBERTa/ELECTRA/DistilBERT, which is exactly the stock
classes' layout), which params are unused under mean pooling (the BERT/ALBERT pooler) and the
default `model_type`. DeBERTa-v2's classifier reads its ContextPooler, which the task class keeps
beside the base model (`pooler.dense`, not `deberta.pooler.dense`): a pooler loaded from the
checkpoint (`pooler/dense`) and a new one that is the head's first layer (`head/dense`) both
export there, the classifier (`head/out_proj` either way) as `classifier`. Token-level heads are
one Dense for every text model (`classifier` of *ForTokenClassification, `qa_outputs` of
*ForQuestionAnswering).

Not here: reading runs, writing files (`hf.py`, `lite.py`, `torchvision_format.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ftjax.export.common import ExportError
from ftjax.pretrained.arch import KeyRule

__all__ = [
    "Family",
    "FAMILIES",
    "TEXT_TASKS",
    "IMAGE_TASKS",
    "dense_rules",
    "token_head_rules",
    "get",
    "supported",
]

TEXT_TASKS = (
    "classification",
    "multi_label",
    "regression",
    "token_classification",
    "extractive_qa",
)
IMAGE_TASKS = ("classification", "multi_label", "regression")


def dense_rules(flax: str, torch: str) -> list[KeyRule]:
    """A Flax Dense at `flax` as torch Linear `torch` (weight transposed, bias copied)."""
    return [
        (rf"{flax}/kernel", f"{torch}.weight", "linear"),
        (rf"{flax}/bias", f"{torch}.bias", "copy"),
    ]


def token_head_rules(task: str) -> list[KeyRule]:
    """The one-Dense token head: `qa_outputs` for extractive QA, `classifier` for tagging."""
    return dense_rules("head", "qa_outputs" if task == "extractive_qa" else "classifier")


@dataclasses.dataclass(frozen=True)
class Family:
    """One architecture's PyTorch side.

    Attributes:
      arch: the ftjax architecture name (`ftjax.pretrained.registry`).
      kind: "text" or "image".
      class_prefix: checkpoint config -> the transformers class prefix ("Bert", "XLMRoberta");
        None for architectures exported in another package's layout (EfficientNet-Lite,
        torchvision's MobileNetV2).
      model_type: config.json's model_type when the checkpoint config lacks one.
      sequence_head: rules mapping ftjax's example-level head params to the task class's keys.
      output_layer: the params path of the head's output Dense (regression folds the target
        standardisation into it).
      unused_at_mean: Flax path regexes that mean pooling never reads (not exported then).
      constant_keys: checkpoint config -> backbone keys (without the prefix) the class holds and
        ftjax has no param for, with the values to write: DINOv2's pre-training `mask_token`
        (zeros, its init; classification never reads it), so a strict load finds every key.
    """

    arch: str
    kind: str
    class_prefix: Callable[[Mapping[str, Any]], str] | None
    model_type: str | None
    sequence_head: tuple[KeyRule, ...]
    output_layer: tuple[str, ...] = ("head",)
    unused_at_mean: tuple[str, ...] = ()
    constant_keys: Callable[[Mapping[str, Any]], dict[str, np.ndarray]] | None = None

    @property
    def tasks(self) -> tuple[str, ...]:
        return TEXT_TASKS if self.kind == "text" else IMAGE_TASKS


def _fixed(prefix: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda config: prefix


def _roberta_prefix(config: Mapping[str, Any]) -> str:
    return "XLMRoberta" if config.get("model_type") == "xlm-roberta" else "Roberta"


def _mask_token(config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Dinov2Model's `embeddings.mask_token` (absent when `use_mask_token` is false)."""
    if not config.get("use_mask_token", True):
        return {}
    return {"embeddings.mask_token": np.zeros((1, config["hidden_size"]), np.float32)}


_TWO_LAYER = ("head", "out_proj")
_ONE_DENSE = tuple(dense_rules("head", "classifier"))
_DENSE_OUT_PROJ = tuple(
    dense_rules("head/dense", "classifier.dense")
    + dense_rules("head/out_proj", "classifier.out_proj")
)

FAMILIES: dict[str, Family] = {
    f.arch: f
    for f in (
        Family("bert", "text", _fixed("Bert"), "bert", _ONE_DENSE, unused_at_mean=(r"pooler/.*",)),
        Family(
            "albert", "text", _fixed("Albert"), "albert", _ONE_DENSE, unused_at_mean=(r"pooler/.*",)
        ),
        Family("roberta", "text", _roberta_prefix, "roberta", _DENSE_OUT_PROJ, _TWO_LAYER),
        Family("electra", "text", _fixed("Electra"), "electra", _DENSE_OUT_PROJ, _TWO_LAYER),
        Family(
            "distilbert",
            "text",
            _fixed("DistilBert"),
            "distilbert",
            tuple(
                dense_rules("head/dense", "pre_classifier")
                + dense_rules("head/out_proj", "classifier")
            ),
            _TWO_LAYER,
        ),
        Family(
            "deberta_v2",
            "text",
            _fixed("DebertaV2"),
            "deberta-v2",
            tuple(
                dense_rules("pooler/dense", "pooler.dense")  # overrides the backbone's rule
                + dense_rules("head/dense", "pooler.dense")
                + dense_rules("head/out_proj", "classifier")
            ),
            _TWO_LAYER,
        ),
        Family("vit", "image", _fixed("ViT"), "vit", _ONE_DENSE),
        # The head reads concat(CLS, patch mean), as Dinov2ForImageClassification's classifier.
        Family(
            "dinov2", "image", _fixed("Dinov2"), "dinov2", _ONE_DENSE, constant_keys=_mask_token
        ),
        Family(
            "dinov2_with_registers",
            "image",
            _fixed("Dinov2WithRegisters"),
            "dinov2_with_registers",
            _ONE_DENSE,
            constant_keys=_mask_token,
        ),
        Family(
            "resnet",
            "image",
            _fixed("ResNet"),
            "resnet",
            tuple(dense_rules("head", "classifier.1")),
        ),
        Family("convnext", "image", _fixed("ConvNext"), "convnext", _ONE_DENSE),
        # efficientnet-lite-pytorch's EfficientNet: no transformers class, no model_type.
        Family("efficientnet_lite", "image", None, None, tuple(dense_rules("head", "_fc"))),
        # torchvision's mobilenet_v2 (transformers' MobileNetV2 is a TF-ported other layout).
        Family("mobilenet_v2", "image", None, None, tuple(dense_rules("head", "classifier.1"))),
    )
}


def supported() -> str:
    """Every exportable architecture with its tasks, for error messages."""
    return "; ".join(f"{a}: {', '.join(f.tasks)}" for a, f in sorted(FAMILIES.items()))


def get(arch: str, task: str) -> Family:
    """The family of `arch`, checked to export `task`; the error names what is supported."""
    family = FAMILIES.get(arch)
    if family is None or task not in family.tasks:
        what = f"architecture {arch!r}" if family is None else f"the {task!r} task on {arch!r}"
        raise ExportError(f"ftjax.export does not export {what}; it exports {supported()}")
    return family
