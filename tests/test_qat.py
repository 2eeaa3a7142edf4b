"""Quantisation-aware fine-tuning (`ftjax.compress.qat`): the QAT forward is exactly the int8
model's (Dense layers through qwix, a CNN's convolutions through the same round trip as
`QuantizedModel`), gradients reach the float kernels straight through, a QAT run trains,
evaluates and becomes the int8 run that computes its logits, and bad settings are refused by
name."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from engine_models import convnet, image_batch
from test_quantize import _batch, _loud
from train_fixtures import data_dir, small_config, tiny_bert  # noqa: F401  (pytest fixtures)

from ftjax import inference, train
from ftjax.compress import qat, quantize
from ftjax.config import ConfigError, validate
from ftjax.export import export
from ftjax.pretrained.load import load_pretrained


def _logits(model, params, batch, state=None):
    return np.asarray(jax.jit(lambda p: model.apply(p, state or {}, batch, train=False)[0])(params))


def _int8(model, params, spec, batch):
    """The int8 PTQ model of `params` (what `ftjax.compress --method=int8` writes)."""
    ptq = quantize.with_quantization(model, spec)
    return ptq, ptq.quantize(params, batch)


def test_the_qat_forward_is_the_int8_model_and_gradients_reach_the_float_kernels(tiny_bert):
    pre = load_pretrained(str(tiny_bert), 3, pooling="mean")
    params = _loud(pre.params)
    spec = qat.qat_spec(params, "int8", None, ".*", False)
    assert not spec.convs and "head" in spec.modules
    model = qat.with_qat(pre.model, spec)
    batch = _batch(pre)  # a Pretrained has the preprocessing and model a run has
    fake = _logits(model, params, batch)
    ptq, qparams = _int8(pre.model, params, spec, batch)
    np.testing.assert_array_equal(fake, _logits(ptq, qparams, batch))
    assert not np.allclose(fake, _logits(pre.model, params, batch), atol=1e-6)

    def grads(m):
        loss = lambda p: jnp.sum(m.apply(p, {}, batch, train=False)[0] ** 2)
        return jax.grad(loss)(params)

    ours, plain = grads(model), grads(pre.model)
    kernel = lambda g: np.asarray(g["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"])
    assert np.abs(kernel(ours)).sum() > 0  # straight through, not the zero gradient of round()
    assert not np.allclose(kernel(ours), kernel(plain))  # taken at the quantised weights


def test_a_convnets_qat_forward_quantises_its_convolutions_as_the_int8_model_does():
    model = convnet(classes=3)
    batch = {"image": jnp.asarray(image_batch(np.random.default_rng(0), 4, 12, 3)["image"])}
    params, state = model.init(jax.random.key(0), batch)
    spec = qat.qat_spec(params, "int8", None, ".*", False)
    assert spec.convs  # a CNN is nearly all convolution kernels: always part of its QAT
    fake = _logits(qat.with_qat(model, spec), params, batch, state)
    ptq, qparams = _int8(model, params, spec, batch)
    np.testing.assert_array_equal(fake, _logits(ptq, qparams, batch, state))
    float_spec = dataclasses.replace(spec, convs=False)  # the head alone: far from it
    assert not np.allclose(fake, _logits(qat.with_qat(model, float_spec), params, batch, state))


def test_a_qat_run_trains_evaluates_and_becomes_the_int8_run_of_its_logits(
    tmp_path, tiny_bert, data_dir
):
    config = small_config(tiny_bert, data_dir, qat__weights="int8")
    results = train.run(config, tmp_path / "qat")
    assert 0 <= results["test"]["accuracy"] <= 1
    run = inference.load_run(tmp_path / "qat")
    assert isinstance(run.model, qat.QatModel) and run.record["qat"]["weights"] == "int8"
    summary = quantize.quantize_run(tmp_path / "qat", tmp_path / "int8")
    int8 = inference.load_run(tmp_path / "int8")
    assert not int8.record.get("qat") and summary["quantization"]["modules"]
    batch = _batch(run)
    np.testing.assert_allclose(
        _logits(int8.model, int8.params, batch), _logits(run.model, run.params, batch), atol=1e-5
    )
    summary = export(tmp_path / "qat", tmp_path / "hf", format="hf")
    assert any("quantisation-aware" in n for n in summary.notes)


def test_qat_settings_that_cannot_apply_are_refused_by_name(tmp_path, tiny_bert, data_dir):
    bad = {
        "config.qat.weights: is 'int4'": dict(qat__weights="int4"),
        "config.qat.weights: is '' .* qat.activations": dict(qat__activations="int8"),
        "config.qat.pattern: pattern '\\(' is not a valid regex": dict(
            qat__weights="int8", qat__pattern="("
        ),
        "config.qat.weights: is set with peft.lora.targets": dict(
            qat__weights="int8", peft__lora__targets="query_value"
        ),
        "config.train.cache_features: is True with qat.weights": dict(
            qat__weights="int8", train__cache_features=True
        ),
    }
    for message, overrides in bad.items():
        with pytest.raises(ConfigError, match=message):
            validate(small_config(tiny_bert, data_dir, **overrides))
    nothing = small_config(tiny_bert, data_dir, qat__weights="int8", qat__pattern="decoder/.*")
    with pytest.raises(ConfigError, match="config.qat: pattern 'decoder/.*' matches no Dense"):
        train.build(nothing)
    assert not (tmp_path / "qat").exists()
