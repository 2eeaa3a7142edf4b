"""DINOv2 (and DINOv2 with registers) loaded from transformers checkpoints computes what
transformers computes, at the checkpoint's image size and at others (position embeddings
resampled at load, as transformers does on every forward), and exports back to transformers.

Checkpoints are `arch_checkpoints.save_dinov2`'s: hidden 27 over 3 heads, 3 layers, patch 4 at
28 px, random layer scales, LayerNorm affine params and register tokens, an O(1) classifier. The
contract every architecture keeps (groups, freeze-aware dropout, bfloat16, strict loading) is
tests/test_architectures.py's.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from arch_checkpoints import image_batch, save_dinov2
from etils import epath

from ftjax import inference
from ftjax.config import defaults
from ftjax.export import export_run
from ftjax.pretrained.arch_resnet import IMAGENET_MEAN, IMAGENET_STD
from ftjax.pretrained.load import load_pretrained
from ftjax.tasks import Classification

TOL = 1e-4
VARIANTS = {  # name -> save_dinov2 arguments: the plain MLP; registers with the SwiGLU MLP
    "plain": dict(head=True),
    "registers": dict(head=True, registers=2, use_swiglu_ffn=True),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return {
        name: save_dinov2(tmp_path_factory.mktemp(name), seed=i, **kwargs)
        for i, (name, kwargs) in enumerate(VARIANTS.items())
    }


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _with_torch_head(pre, classifier: torch.nn.Linear):
    params = dict(pre.params)
    params["head"] = {
        "kernel": jnp.asarray(classifier.weight.detach().numpy().T),
        "bias": jnp.asarray(classifier.bias.detach().numpy()),
    }
    return params


def _ours(pre, params, image):
    """ftjax's last hidden states (after the final LayerNorm) and logits."""
    module = pre.model.module
    run = jax.jit(
        lambda p, x: (
            module.apply({"params": p}, x, method="encode"),
            module.apply({"params": p}, x),
        )
    )
    hidden, logits = run(params, jnp.asarray(image))
    return np.asarray(hidden), np.asarray(logits)


@pytest.mark.parametrize(
    "variant,size",
    [("plain", 28), ("plain", 20), ("registers", 36)],  # tests/test_vit.py: every resample
    ids=lambda v: str(v),
)
def test_hidden_states_pooled_output_and_logits_match_transformers(saved, variant, size):
    s = saved[variant]
    pre = load_pretrained(s.folder, num_classes=5, image_size=size)
    assert pre.arch == ("dinov2_with_registers" if variant == "registers" else "dinov2")
    assert sorted(pre.report.reinitialised) == ["head/bias", "head/kernel"]
    prefix = f"{pre.arch}."  # the *ForImageClassification's backbone keys
    assert sorted(pre.report.ignored) == [
        "classifier.bias",
        "classifier.weight",
        f"{prefix}embeddings.mask_token",
    ]
    assert "embeddings/position_embeddings" in pre.report.loaded
    assert pre.config["image_size"] == size  # the model is a DINOv2 at the run's size
    assert pre.preprocessing == {"image_size": size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}

    x = image_batch(size, n=3, seed=size)["image"]
    reference = s.reference
    backbone = reference.base_model
    with torch.no_grad():
        ref = backbone(_nchw(x))
        ref_logits = reference(_nchw(x)).logits.numpy()
    hidden, logits = _ours(pre, _with_torch_head(pre, reference.classifier), x)
    diffs = {
        "last_hidden_state": np.abs(hidden - ref.last_hidden_state.numpy()).max(),
        "pooler_output": np.abs(hidden[:, 0] - ref.pooler_output.numpy()).max(),
        "logits": np.abs(logits - ref_logits).max(),
    }
    print(variant, size, {k: f"{v:.1e}" for k, v in diffs.items()})
    assert max(diffs.values()) < TOL, diffs
    assert np.abs(ref_logits).max() > 0.3  # O(1) logits: the tolerance means something


def test_bad_image_sizes_are_named(saved, tmp_path):
    with pytest.raises(ValueError, match=r"image size 30 is not a multiple of the checkpoint's "):
        load_pretrained(saved["plain"].folder, num_classes=2, image_size=30)


def test_hf_export_at_the_runs_size_loads_in_transformers_and_back(saved, tmp_path):
    """A run at another size exports as the transformers class at that size (config.json's
    image_size, resampled position embeddings, the unused mask token), loads strictly with
    ftjax's logits, and loads back into ftjax as a checkpoint with the same backbone."""
    variant, size = "registers", 20
    s = saved[variant]
    task = Classification(5)
    pre = load_pretrained(s.folder, num_classes=5, image_size=size)
    config = defaults()
    config.model.source = str(s.folder)
    config.data.image_size = size
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    inference.write_record(epath.Path(workdir), config, pre, task, max_length=None)
    record = inference.read_record(workdir)
    params = _with_torch_head(pre, s.reference.classifier)
    run = inference.Run(
        workdir, pre.model, params, pre.state, task, record["preprocessing"], record, "best", 7
    )
    summary = export_run(run, tmp_path / "export", "hf")
    cls = type(s.reference).__name__
    assert summary.model_class == cls
    assert json.loads((tmp_path / "export" / "config.json").read_text())["image_size"] == size

    model, info = transformers.AutoModelForImageClassification.from_pretrained(
        tmp_path / "export", output_loading_info=True
    )
    assert type(model).__name__ == cls
    assert not {k: v for k, v in info.items() if k != "error_msgs" and v}, info
    x = image_batch(size, n=2, seed=1)["image"]
    with torch.no_grad():
        theirs = model.eval()(_nchw(x)).logits.numpy()
    hidden, ours = _ours(pre, params, x)
    diff = np.abs(ours - theirs).max()
    print(f"{variant} export at {size} px: logits max abs diff {diff:.1e}")
    assert diff < TOL

    back = load_pretrained(tmp_path / "export", num_classes=5)
    assert back.arch == pre.arch and back.config["image_size"] == size
    assert np.abs(_ours(back, back.params, x)[0] - hidden).max() < 1e-6
