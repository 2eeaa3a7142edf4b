"""Mean-pooling sequence classifiers for transformers (PyTorch): the modeling file of an ftjax
export whose run used `model.pooling = "mean"`.

`python -m ftjax.export --format=hf` copies this file, unchanged, beside config.json and names
one of its classes in config.json's `auto_map`, so that

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)

builds the model ftjax trained: the encoder's last hidden states, their mean over the tokens the
attention mask keeps, then the architecture's stock sequence head (BERT/ALBERT: one Linear
`classifier`; RoBERTa/XLM-R/ELECTRA: `classifier.dense` + `classifier.out_proj`; DistilBERT:
`pre_classifier` + `classifier`; DeBERTa-v2: its ContextPooler `pooler.dense` + `classifier`).
Keys and sub-modules are the stock *ForSequenceClassification classes', without the pooler the
stock BERT/ALBERT classes would use instead. The stock classes
(loaded without `trust_remote_code=True`) read the first token instead of the mean: other
predictions, with no error.

ftjax never imports this file (ftjax does not depend on torch); transformers imports it from the
export folder.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.albert.modeling_albert import AlbertModel, AlbertPreTrainedModel
from transformers.models.bert.modeling_bert import BertModel, BertPreTrainedModel
from transformers.models.deberta_v2.modeling_deberta_v2 import (
    ContextPooler,
    DebertaV2Model,
    DebertaV2PreTrainedModel,
)
from transformers.models.distilbert.modeling_distilbert import (
    DistilBertModel,
    DistilBertPreTrainedModel,
)
from transformers.models.electra.modeling_electra import (
    ElectraClassificationHead,
    ElectraModel,
    ElectraPreTrainedModel,
)
from transformers.models.roberta.modeling_roberta import (
    RobertaClassificationHead,
    RobertaModel,
    RobertaPreTrainedModel,
)
from transformers.models.xlm_roberta.modeling_xlm_roberta import (
    XLMRobertaClassificationHead,
    XLMRobertaModel,
    XLMRobertaPreTrainedModel,
)

__all__ = [
    "mean_pool",
    "BertMeanPoolingForSequenceClassification",
    "AlbertMeanPoolingForSequenceClassification",
    "RobertaMeanPoolingForSequenceClassification",
    "XLMRobertaMeanPoolingForSequenceClassification",
    "ElectraMeanPoolingForSequenceClassification",
    "DistilBertMeanPoolingForSequenceClassification",
    "DebertaV2MeanPoolingForSequenceClassification",
]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over unmasked tokens (ftjax's and sentence-transformers')."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def _loss(config, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The stock classes' loss for config.problem_type (inferred from labels when unset)."""
    problem = config.problem_type
    if problem is None:
        if config.num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        if config.num_labels == 1:
            return nn.functional.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return nn.functional.mse_loss(logits, labels.to(logits.dtype))
    if problem == "single_label_classification":
        return nn.functional.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class _MeanPooling:
    """The forward every class below shares; each sets its encoder (at base_model_prefix) and
    implements `_head(pooled) -> logits`."""

    _token_types = True  # whether the encoder takes token_type_ids

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,  # peft's PeftModel passes it; False gives a tuple
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        inputs = dict(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds
        )
        if self._token_types:
            inputs["token_type_ids"] = token_type_ids
        encoder = getattr(self, self.base_model_prefix)
        outputs = encoder(**inputs, position_ids=position_ids, return_dict=True, **kwargs)
        hidden = outputs.last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
        logits = self._head(mean_pool(hidden, attention_mask))
        out = SequenceClassifierOutput(
            loss=None if labels is None else _loss(self.config, logits, labels),
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return out.to_tuple() if return_dict is False else out


def _dropout_rate(config) -> float:
    rate = getattr(config, "classifier_dropout", None)
    return config.hidden_dropout_prob if rate is None else rate


class BertMeanPoolingForSequenceClassification(_MeanPooling, BertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(_dropout_rate(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _head(self, pooled):
        return self.classifier(self.dropout(pooled))


class AlbertMeanPoolingForSequenceClassification(_MeanPooling, AlbertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.albert = AlbertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _head(self, pooled):
        return self.classifier(self.dropout(pooled))


class _TwoLayerHead:
    """The stock dense -> activation -> out_proj heads read the first token of [B, L, H]
    features: handing them the pooled vector as a one-token sequence applies them unchanged."""

    def _head(self, pooled):
        return self.classifier(pooled[:, None, :])


class RobertaMeanPoolingForSequenceClassification(
    _TwoLayerHead, _MeanPooling, RobertaPreTrainedModel
):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.classifier = RobertaClassificationHead(config)
        self.post_init()


class XLMRobertaMeanPoolingForSequenceClassification(
    _TwoLayerHead, _MeanPooling, XLMRobertaPreTrainedModel
):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.roberta = XLMRobertaModel(config, add_pooling_layer=False)
        self.classifier = XLMRobertaClassificationHead(config)
        self.post_init()


class ElectraMeanPoolingForSequenceClassification(
    _TwoLayerHead, _MeanPooling, ElectraPreTrainedModel
):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.electra = ElectraModel(config)
        self.classifier = ElectraClassificationHead(config)
        self.post_init()


class DistilBertMeanPoolingForSequenceClassification(_MeanPooling, DistilBertPreTrainedModel):
    _token_types = False

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.distilbert = DistilBertModel(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, config.num_labels)
        self.dropout = nn.Dropout(config.seq_classif_dropout)
        self.post_init()

    def _head(self, pooled):
        x = nn.functional.relu(self.pre_classifier(pooled))
        return self.classifier(self.dropout(x))


class DebertaV2MeanPoolingForSequenceClassification(_MeanPooling, DebertaV2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.deberta = DebertaV2Model(config)
        self.pooler = ContextPooler(config)
        self.classifier = nn.Linear(self.pooler.output_dim, config.num_labels)
        rate = getattr(config, "cls_dropout", None)
        self.dropout = nn.Dropout(config.hidden_dropout_prob if rate is None else rate)
        self.post_init()

    def _head(self, pooled):
        # The ContextPooler reads the first token of [B, L, H]: the mean as a one-token sequence.
        return self.classifier(self.dropout(self.pooler(pooled[:, None, :])))
