"""Each image encoder fine-tunes end to end through `python -m ftjax.main`: a tiny random
checkpoint on a tiny image folder (two classes, dark and light, of mixed sizes), a head phase (on
cached features) then all layers, a few steps each. The finished run then predicts on its images
and exports for transformers (`python -m ftjax.export --format=hf`), whose model gives the run's
logits and reads back into ftjax with the run's backbone bitwise. Slow: one CLI run per
architecture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from arch_checkpoints import save_convnext, save_dinov2, save_resnet, save_vit
from flax import traverse_util
from PIL import Image
from train_fixtures import jax_cache, read_jsonl, run_cli, write_config  # noqa: F401  (fixtures)

from ftjax import inference, inputs, predict
from ftjax.export import __main__ as export_cli
from ftjax.pretrained.load import load_pretrained

# architecture -> checkpoint factory (tests/arch_checkpoints.py)
CASES = {
    # Two stages: each 7x7 depthwise layer adds seconds to every step's compile.
    "convnext": lambda folder: save_convnext(
        folder, num_stages=2, hidden_sizes=[12, 20], depths=[1, 1]
    ),
    "dinov2": lambda folder: save_dinov2(folder, crop_size=20),  # 28 px checkpoint, run at 20
    "resnet": save_resnet,  # batch norm: frozen in the head phase, training in "all"
    "vit": save_vit,
}
PHASES = (
    dict(name="head", trainable="head", lr=1e-2, steps=2),
    dict(name="all", trainable="all", lr=1e-3, layerwise_decay=0.8),
)
CLASSES = ("dark", "light")


def _image_folder(root: Path, per_class: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (28 + i % 3 * 6, 34 - i % 2 * 6, 3)  # resized and cropped to the model's size
            pixels = np.clip(40 + 150 * c + rng.integers(-30, 30, shape), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(CASES))
def test_image_encoder_fine_tunes_predicts_and_exports(arch, tmp_path, jax_cache):
    images = _image_folder(tmp_path / "images")
    model_dir = tmp_path / "model"
    CASES[arch](model_dir)
    config = write_config(
        tmp_path / "config.py",
        model_dir,
        tmp_path,
        model__pooling="cls",
        data__name="image_folder",
        data__path=str(images),
        data__train_examples=None,
        data__eval_examples=None,
        train__batch_size=8,
        train__eval_batch_size=16,
        train__steps=5,
        train__eval_every_steps=3,
        train__checkpoint_every_steps=3,
        train__log_every_steps=1,
        plan__phases=PHASES,
        train__cache_features=True,  # the head phase on cached features
    )
    workdir = tmp_path / "run"
    out = run_cli(config, workdir, jax_cache=jax_cache, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    log = out.stdout + out.stderr
    assert "caching features for head" in log
    assert "phase head: training without cached features" not in log
    # The check that refuses to cache 'all' runs the model forward (ConvNeXt's depthwise kernel
    # has a custom VJP, which forward-mode autodiff cannot pass).
    assert "phase all: training without cached features (it trains backbone groups" in log

    results = json.loads((workdir / "results.json").read_text())
    assert math.isfinite(results["test"]["loss"]) and results["test"]["count"] > 0
    assert 0 <= results["test"]["accuracy"] <= 1
    train = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]
    assert train and all(math.isfinite(r["loss"]) for r in train)
    assert results["steps"] == max(r["step"] for r in train) == 5  # both phases ran

    run = inference.load_run(workdir, finished=True)
    items = inputs.read_inputs(images, kind="image", task="classification")[::8]
    rows = predict.predict(run, items, batch_size=4)
    assert [r["path"] for r in rows] == [it["path"] for it in items]
    assert all(r["label"] in CLASSES and set(r["scores"]) == set(CLASSES) for r in rows)

    export = tmp_path / "export"
    assert export_cli.main([f"--workdir={workdir}", f"--out={export}", "--format=hf"]) == 0
    exported, info = transformers.AutoModelForImageClassification.from_pretrained(
        export, output_loading_info=True
    )
    assert not {k: v for k, v in info.items() if k != "error_msgs" and v}, info
    size = run.preprocessing["image_size"]
    x = np.random.default_rng(1).standard_normal((3, size, size, 3)).astype(np.float32)
    ours = jax.jit(lambda p, s, b: run.model.apply(p, s, b, train=False)[0])(
        run.params, run.model_state, {"image": jnp.asarray(x)}
    )
    with torch.no_grad():
        theirs = exported.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).logits
    diff = np.abs(np.asarray(ours) - theirs.numpy()).max()
    print(f"{arch}: exported logits max abs diff {diff:.2e}")
    assert diff < 1e-4

    back = load_pretrained(export, num_classes=len(CLASSES))
    flat = traverse_util.flatten_dict(run.params, sep="/")
    for path, value in traverse_util.flatten_dict(back.params, sep="/").items():
        if not path.startswith("head/"):
            np.testing.assert_array_equal(np.asarray(value), np.asarray(flat[path]), path)
