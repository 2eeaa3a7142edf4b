"""Task heads and losses agree with transformers' task classes on the same weights.

For each task kind a tiny random transformers model with its task head is saved, loaded with
`load_pretrained` (pooling "cls" for the sequence heads, "tokens" for the token-level ones), the
torch head copied into `params['head']` (ftjax always re-initialises it), and then on a padded
batch in eval mode: the logits equal the torch model's, and `masked_mean(task.loss(...))` equals
the `loss` the torch model returns for the same labels. This pins both the head layout
(pooler or none, one Dense per token even where the sequence head has two layers) and each
task's loss reduction (token mean for tagging, mean over labels for multi-label, ...).

The token-level contract (no pooling "tokens" on image models; groups, head and dropout at
token level on every text encoder) is here too: `tests/test_architectures.py` covers the default
pooling.
"""

from __future__ import annotations

import inspect
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from arch_checkpoints import FACTORIES, loud, save_with_head

from ftjax.models import layers
from ftjax.models.base import flat_paths
from ftjax.pretrained.load import load_pretrained
from ftjax.tasks.base import masked_mean
from ftjax.tasks.extractive_qa import ExtractiveQA
from ftjax.tasks.multi_label import MultiLabel
from ftjax.tasks.regression import Regression
from ftjax.tasks.token_classification import TokenClassification

TEXT_ARCHS = ("albert", "bert", "distilbert", "electra", "roberta")
TOKEN_CLASSES = {
    "albert": "AlbertForTokenClassification",
    "bert": "BertForTokenClassification",
    "distilbert": "DistilBertForTokenClassification",
    "electra": "ElectraForTokenClassification",
    "roberta": "RobertaForTokenClassification",
}
TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
TOL = 1e-4


def _load(saved, num_classes: int, pooling: str):
    """The checkpoint in ftjax with the torch model's (loud) task head copied in."""
    reference = saved.reference
    torch_head = reference.qa_outputs if hasattr(reference, "qa_outputs") else reference.classifier
    loud(torch_head)
    pre = load_pretrained(saved.folder, num_classes=num_classes, pooling=pooling)
    params = dict(pre.params)
    params["head"] = {
        "kernel": jnp.asarray(torch_head.weight.detach().numpy().T),
        "bias": jnp.asarray(torch_head.bias.detach().numpy()),
    }
    return pre, params


def _run(saved, pre, params, **labels):
    """(ftjax logits, torch outputs with `labels`), both in eval mode on the saved batch."""
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in saved.batch.items()}
    logits, _ = jax.jit(lambda p: pre.model.apply(p, pre.state, batch, train=False))(params)
    accepted = inspect.signature(saved.reference.forward).parameters
    inputs = {k: torch.as_tensor(v) for k, v in saved.batch.items() if k in accepted}
    with torch.no_grad():
        out = saved.reference.eval()(**inputs, **{k: torch.as_tensor(v) for k, v in labels.items()})
    assert logits.dtype == jnp.float32
    return logits, out


def _close(ours, theirs):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    assert np.abs(ours - theirs).max() < TOL, np.abs(ours - theirs).max()


def _loss(task, logits, batch) -> float:
    return float(masked_mean(task.loss(logits, batch), batch))


def _tags(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Tag ids on real tokens, -100 on padding, on [CLS] and on some later sub-tokens."""
    tags = rng.integers(0, len(TAGS), mask.shape)
    ignored = (mask == 0) | (rng.random(mask.shape) < 0.25)
    ignored[:, 0] = True
    return np.where(ignored, -100, tags)


def test_bert_regression_head_and_mse_loss(tmp_path):
    saved = save_with_head(
        "bert", tmp_path, "BertForSequenceClassification", num_labels=1, problem_type="regression"
    )
    pre, params = _load(saved, 1, "cls")
    target = np.random.default_rng(0).standard_normal(len(saved.batch["input_ids"]))
    target = target.astype(np.float32)
    logits, out = _run(saved, pre, params, labels=target)
    _close(logits, out.logits.numpy())
    loss = _loss(Regression(), logits, {"target": jnp.asarray(target)})
    assert abs(loss - out.loss.item()) < TOL, (loss, out.loss.item())


def test_bert_multi_label_head_and_bce_loss(tmp_path):
    saved = save_with_head(
        "bert",
        tmp_path,
        "BertForSequenceClassification",
        num_labels=4,
        problem_type="multi_label_classification",
    )
    pre, params = _load(saved, 4, "cls")
    rows = len(saved.batch["input_ids"])
    labels = (np.random.default_rng(0).random((rows, 4)) < 0.5).astype(np.float32)
    logits, out = _run(saved, pre, params, labels=labels)
    _close(logits, out.logits.numpy())
    task = MultiLabel(label_names=("a", "b", "c", "d"))
    loss = _loss(task, logits, {"labels": jnp.asarray(labels)})
    assert abs(loss - out.loss.item()) < TOL, (loss, out.loss.item())


def test_bert_token_classification_head_and_token_mean_loss(tmp_path):
    saved = save_with_head("bert", tmp_path, "BertForTokenClassification", num_labels=len(TAGS))
    pre, params = _load(saved, len(TAGS), "tokens")
    assert "pooler" not in params  # BertForTokenClassification has none: it loads without one
    tags = _tags(saved.batch["attention_mask"], np.random.default_rng(0))
    logits, out = _run(saved, pre, params, labels=tags)
    _close(logits, out.logits.numpy())
    loss = _loss(
        TokenClassification(tag_names=TAGS), logits, {"tags": jnp.asarray(tags, jnp.int32)}
    )
    assert abs(loss - out.loss.item()) < TOL, (loss, out.loss.item())


def test_bert_question_answering_head_and_span_loss(tmp_path):
    saved = save_with_head("bert", tmp_path, "BertForQuestionAnswering")
    pre, params = _load(saved, 2, "tokens")
    lengths = saved.batch["attention_mask"].sum(1)
    rng = np.random.default_rng(0)
    start = rng.integers(1, lengths)
    end = np.minimum(start + rng.integers(0, 3, len(start)), lengths - 1)
    logits, out = _run(saved, pre, params, start_positions=start, end_positions=end)
    _close(logits[..., 0], out.start_logits.numpy())
    _close(logits[..., 1], out.end_logits.numpy())
    positions = {
        "start_positions": jnp.asarray(start, jnp.int32),
        "end_positions": jnp.asarray(end, jnp.int32),
    }
    loss = _loss(ExtractiveQA(), logits, positions)
    assert abs(loss - out.loss.item()) < TOL, (loss, out.loss.item())


@pytest.mark.parametrize("name", [n for n in TEXT_ARCHS if n != "bert"])
def test_token_head_matches_transformers_token_classification(name, tmp_path):
    """The one-Dense token head, also where the sequence head has two layers (RoBERTa, ELECTRA,
    DistilBERT) and behind ALBERT's shared layers."""
    saved = save_with_head(name, tmp_path, TOKEN_CLASSES[name], num_labels=len(TAGS))
    pre, params = _load(saved, len(TAGS), "tokens")
    tags = _tags(saved.batch["attention_mask"], np.random.default_rng(1))
    logits, out = _run(saved, pre, params, labels=tags)
    _close(logits, out.logits.numpy())
    loss = _loss(
        TokenClassification(tag_names=TAGS), logits, {"tags": jnp.asarray(tags, jnp.int32)}
    )
    assert abs(loss - out.loss.item()) < TOL, (loss, out.loss.item())


def _head_input_is_root_dropout(model, params, batch) -> bool:
    """Whether the head is fed the output of a root-level freeze-aware Dropout (what feature
    caching relies on: it caches that dropout's input)."""
    seen = {"head": [], "dropouts": []}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = tuple(context.module.scope.path) if context.module.scope else ()
        if context.method_name == "__call__" and path == ("head",):
            seen["head"].append(args[0])
        elif context.method_name == "__call__" and len(path) == 1:
            if isinstance(context.module, layers.Dropout):
                seen["dropouts"].append(out)
        return out

    with nn.intercept_methods(interceptor):
        model.apply(params, {}, batch, train=False)
    (head_in,) = seen["head"]
    return any(out is head_in for out in seen["dropouts"])


@pytest.mark.parametrize("name", TEXT_ARCHS)
def test_token_level_contract(name, tmp_path):
    """On the architecture's plain (pooler-carrying) checkpoint: pooling "tokens" loads, its
    groups cover every param once with the head last and no pooler, the head is one new Dense
    behind the root-level dropout, and the logits are float32 per token."""
    saved = FACTORIES[name](tmp_path)
    pre = load_pretrained(saved.folder, num_classes=3, pooling="tokens", dropout=0.3)
    paths = flat_paths(pre.params)
    groups = pre.model.layer_groups
    for path in paths:
        assert len([g for g, rx in groups if re.fullmatch(rx, path)]) == 1, path
    assert all(any(re.fullmatch(rx, p) for p in paths) for _, rx in groups), "an empty group"
    assert groups[-1] == ("head", "head/.*") and "pooler" not in dict(groups)
    assert not any(p.startswith("pooler/") for p in paths)
    hidden = saved.reference.config.hidden_size
    assert {k: v.shape for k, v in pre.params["head"].items()} == {
        "kernel": (hidden, 3),
        "bias": (3,),
    }
    assert sorted(pre.report.reinitialised) == ["head/bias", "head/kernel"]

    batch = {k: jnp.asarray(v, jnp.int32) for k, v in saved.batch.items()}
    assert _head_input_is_root_dropout(pre.model, pre.params, batch)
    logits, _ = pre.model.apply(pre.params, pre.state, batch, train=False)
    assert logits.shape == (*saved.batch["input_ids"].shape, 3) and logits.dtype == jnp.float32
    # Frozen, train mode is inference mode (no dropout), at token level as at example level.
    frozen = frozenset(paths)
    train_frozen, _ = pre.model.apply(
        pre.params, pre.state, batch, train=True, rng=jax.random.key(1), frozen=frozen
    )
    np.testing.assert_array_equal(np.asarray(train_frozen), np.asarray(logits))


def test_token_pooling_on_an_image_model_is_an_error(tmp_path):
    saved = FACTORIES["vit"](tmp_path)
    with pytest.raises(ValueError, match="token-level tasks need a text encoder"):
        load_pretrained(saved.folder, num_classes=3, pooling="tokens")


def test_unknown_pooling_is_an_error(tmp_path):
    saved = FACTORIES["vit"](tmp_path)
    with pytest.raises(
        ValueError, match=r"pooling 'max' is not one of \('cls', 'mean', 'tokens'\)"
    ):
        load_pretrained(saved.folder, num_classes=3, pooling="max")
