"""`ftjax.compress.quantize`: int8 PTQ of a finished run into a new workdir.

One finished run is written once per module as training writes it, without training (the tiny
BERT with a loud 3-class head), and quantised once. The quantised model must compute exactly
what the float model computes on its kernels put through a numpy per-output-channel absmax int8
round trip; its kernels must be int8 on disk at <= 30% of their float bytes; predict and
evaluate must take its workdir as any run's; the flax export keeps int8 and the hf export is the
dequantised float model. Bad inputs are clear errors that write nothing."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from flax import traverse_util
from test_predict import write_reviews
from train_fixtures import REPO, cli_env, read_jsonl, small_config, snapshot, tiny_bert  # noqa: F401

from ftjax import evaluate, inference, lora
from ftjax import workdir as workdir_lib
from ftjax.checkpoint import Checkpoints
from ftjax.compress import quantize
from ftjax.compress.derived import DerivedRunError
from ftjax.data.tokenize import TextEncoder
from ftjax.export import export, load_flax_export
from ftjax.inference import InferenceError
from ftjax.models.base import Model
from ftjax.models.efficientnet import PointwiseConv
from ftjax.pretrained.load import load_pretrained
from ftjax.tasks import Classification

QUERY = "encoder/layer_0/attention/self/query/kernel"
TEXTS = ["great lovely film", "the door was dull and boring", "a chair and a table", "fine"]


def _loud(params, seed: int = 0):
    """The head redrawn at O(1) scale (a fresh one outputs ~0), so logits tell models apart."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(params)
    for k, v in flat.items():
        if k[0] == "head":
            flat[k] = jnp.asarray(rng.standard_normal(v.shape) / np.sqrt(v.shape[0]), jnp.float32)
    return traverse_util.unflatten_dict(flat)


def _finished_run(tiny_bert, workdir: Path, files: dict[str, Path]) -> Path:
    """The tiny BERT with a loud 3-class head as a finished run (see `_write_finished`)."""
    task = Classification(3, label_names=("neg", "neutral", "pos"))
    pre = load_pretrained(str(tiny_bert), 3, pooling="mean")
    c = small_config(tiny_bert, workdir.parent / "tfds")
    c.data.name, c.data.path = "csv", str(files["train.csv"])
    c.data.text_key, c.data.label_key = "review", "sentiment"
    return _write_finished(workdir, c, pre, task, max_length=32)


def _write_finished(workdir: Path, c, pre, task, max_length: int | None) -> Path:
    """A finished run's workdir as training writes it (record, config.json, run.json, best/,
    final/, results.json), its params `pre`'s with a loud head: no training."""
    inference.write_record(epath.Path(workdir), c, pre, task, max_length=max_length)
    workdir_lib.write_run_files(epath.Path(workdir), c)
    tree = {"params": _loud(pre.params), "model_state": pre.state}
    ckpts = Checkpoints(workdir)
    ckpts.save_best(4, tree, {"accuracy": 0.5, "loss": 1.0, "step": 4})
    ckpts.save_final(6, tree)
    ckpts.close()
    metrics = {"validation": {"accuracy": 0.5}, "test": {"accuracy": 0.5}}
    results = {"task": task.name, "label_names": list(task.label_names), "metrics": metrics}
    (workdir / "results.json").write_text(json.dumps(results))
    return workdir


@pytest.fixture(scope="module")
def runs(tiny_bert, tmp_path_factory):
    """The float run and it quantised ('summary'), both loaded, their logits on TEXTS."""
    root = tmp_path_factory.mktemp("quantize")
    files = {"validation.csv": write_reviews(root / "validation.csv", 24, 1)}
    files["train.csv"] = files["validation.csv"]
    _finished_run(tiny_bert, root / "float", files)
    untouched = snapshot(root / "float")
    summary = quantize.quantize_run(root / "float", root / "int8")
    assert snapshot(root / "float") == untouched  # the source run is only read
    source, run = inference.load_run(root / "float"), inference.load_run(root / "int8")
    batch = _batch(run)
    return {
        "float": root / "float",
        "int8": root / "int8",
        "summary": summary,
        "source": source,
        "run": run,
        "batch": batch,
        "float_logits": _logits(source.model, source.params, batch),
        "int8_logits": _logits(run.model, run.params, batch),
        **files,
    }


def _batch(run) -> dict[str, jax.Array]:
    encoder = TextEncoder(run.preprocessing["tokenizer_file"], 32)
    batch = encoder.collate([encoder.encode(t) for t in TEXTS])
    return {k: jnp.asarray(batch[k]) for k in run.model.input_keys}


def _logits(model: Model, params, batch, state=None) -> np.ndarray:
    forward = jax.jit(lambda p: model.apply(p, state or {}, batch, train=False)[0])
    return np.asarray(forward(params))


def _flat(params) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def _numpy_int8(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric absmax int8 in float32 as qwix computes it: (qvalue, scale
    (1, out)), scale = max|W[:, j]| / 127.5 (the 127 bucket spans [126.5, 127.5]), qvalue =
    W / scale rounded half to even in [-128, 127]. Both divisions are by a reciprocal, as XLA
    runs them, so the absmax entries, which land on +-127.5 exactly, round as qwix's do."""
    scale = np.abs(kernel).max(axis=0, keepdims=True) * np.float32(1 / 127.5)
    qvalue = np.clip(np.round(kernel * (np.float32(1) / scale)), -128, 127)
    return qvalue.astype(np.int8), scale


def _numpy_int8_conv(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_numpy_int8` of a (kh, kw, in, out) kernel, one scale per output channel: (1, 1, 1, out)."""
    q, scale = _numpy_int8(kernel.reshape(-1, kernel.shape[-1]))
    return q.reshape(kernel.shape), scale.reshape(1, 1, 1, -1)


def _numpy_dequantised(params, kernels: list[str]):
    flat = _flat(params)
    for path in kernels:
        q, scale = (_numpy_int8_conv if flat[path].ndim == 4 else _numpy_int8)(flat[path])
        flat[path] = q.astype(np.float32) * scale
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def test_int8_logits_are_the_float_model_on_numpy_round_tripped_kernels(runs):
    source, run = runs["source"], runs["run"]
    assert isinstance(run.model, quantize.QuantizedModel)
    kernels = quantize.quantized_kernels(run.params)
    assert "head/kernel" in kernels and "encoder/layer_1/intermediate/dense/kernel" in kernels
    assert len(kernels) == 2 * 6 + 2  # 6 Dense per layer, the pooler, the head
    flat, ours = _flat(source.params), _flat(run.params)
    for path in kernels:
        q, scale = _numpy_int8(flat[path])
        assert ours[f"{path}/qvalue"].dtype == np.int8
        np.testing.assert_array_equal(ours[f"{path}/scale"], scale)
        np.testing.assert_array_equal(ours[f"{path}/qvalue"], q)
    int8, float_logits = runs["int8_logits"], runs["float_logits"]
    reference = _logits(source.model, _numpy_dequantised(source.params, kernels), runs["batch"])
    diff = np.abs(int8 - reference).max()
    print(
        f"int8 vs numpy dequantised: {diff:.2e}; vs float {np.abs(int8 - float_logits).max():.2e}"
    )
    assert diff < 1e-5
    np.testing.assert_allclose(int8, float_logits, atol=2e-2)
    assert not np.array_equal(int8, float_logits)


def test_int8_activations_stay_close_to_float(runs):
    run = quantize.quantized(runs["source"], quantize.QuantSpec(activations="int8"))
    acts = _logits(run.model, run.params, runs["batch"])
    np.testing.assert_allclose(acts, runs["float_logits"], atol=5e-2)
    assert not np.array_equal(acts, runs["int8_logits"])  # the inputs were quantised too


def test_stored_int8_kernels_take_at_most_30_percent_of_their_float_bytes(runs):
    sizes = runs["summary"]["sizes"]
    assert sizes["quantized_kernel_bytes"] <= 0.30 * sizes["float_kernel_bytes"]
    # what the rest stores is unchanged: the saving is exactly the kernels'
    saved = sizes["float_kernel_bytes"] - sizes["quantized_kernel_bytes"]
    assert sizes["float_bytes"] - sizes["quantized_bytes"] == saved
    run = inference.load_run(runs["int8"], "final")  # on disk as int8
    assert quantize.stored_bytes(run.params) == sizes["quantized_bytes"]
    results = json.loads((runs["int8"] / "results.json").read_text())
    origin = results["derived_from"]
    assert origin["workdir"] == str(runs["float"].absolute()) and origin["method"] == "int8"
    assert origin["sizes"] == sizes and origin["weights"] == "int8" and not origin["merged_lora"]
    assert origin["step"] == 4 and results["source_metrics"]["test"] == {"accuracy": 0.5}
    spec = inference.read_record(runs["int8"])["quantization"]
    assert {k: spec[k] for k in ("weights", "activations", "pattern")} == {
        "weights": "int8",
        "activations": None,
        "pattern": ".*",
    }
    assert [f"{m}/kernel" for m in spec["modules"]] == runs["summary"]["kernels"]


def test_int8_embedding_tables_are_per_row_int8_and_load_back(runs, tmp_path):
    """--embeddings: every nn.Embed table int8 with one scale per row; the model computes with
    the dequantised tables, the whole params shrink to ~28% here (embeddings are most of it),
    and the written run restores and exports dequantised."""
    source = runs["source"]
    run = quantize.quantized(source, quantize.QuantSpec(embeddings=True))
    ours, flat = _flat(run.params), _flat(source.params)
    table = "embeddings/word_embeddings/embedding"
    assert ours[f"{table}/qvalue"].dtype == np.int8 and ours[f"{table}/scale"].shape == (
        flat[table].shape[0],
        1,
    )
    zero = ~flat[table].any(1)  # an all-zero row (padding) gets scale 1 from qwix, values 0
    q, scale = _numpy_int8(flat[table][~zero].T)  # per row: per output channel of the transpose
    np.testing.assert_array_equal(ours[f"{table}/qvalue"][~zero], q.T)
    np.testing.assert_array_equal(ours[f"{table}/scale"][~zero], scale.T)
    assert (ours[f"{table}/qvalue"][zero] == 0).all()
    dequantised = quantize.dequantized(run)
    reference = _logits(dequantised.model, dequantised.params, runs["batch"])
    np.testing.assert_allclose(_logits(run.model, run.params, runs["batch"]), reference, atol=1e-5)
    sizes = quantize.sizes(source.params, run.params)
    assert sizes["quantized_bytes"] <= 0.30 * sizes["float_bytes"]
    out = tmp_path / "int8_emb"
    from ftjax.compress.derived import write_run

    write_run(source, run, out, {"method": "int8"})
    back = inference.load_run(out, finished=True)
    np.testing.assert_array_equal(_flat(back.params)[f"{table}/qvalue"], ours[f"{table}/qvalue"])


def test_predict_and_evaluate_take_the_quantised_workdir(runs, tmp_path):
    texts = tmp_path / "texts.csv"
    texts.write_text("review\n" + "\n".join(TEXTS) + "\n")
    command = [sys.executable, "-m", "ftjax.predict", f"--workdir={runs['int8']}"]
    done = subprocess.run(
        [*command, f"--input={texts}", f"--output={tmp_path / 'p.jsonl'}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=cli_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_jsonl(tmp_path / "p.jsonl")
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    names = ("neg", "neutral", "pos")
    assert [r["label"] for r in rows] == [names[i] for i in runs["int8_logits"].argmax(-1)]
    # what `python -m ftjax.evaluate --workdir=W --data.path=F --name=int8 --checkpoint=final` does
    path, content = evaluate.run_evaluation(
        runs["int8"], {"path": str(runs["validation.csv"])}, name="int8", checkpoint="final"
    )
    assert path == runs["int8"] / "evaluations" / "int8.json" and path.is_file()
    assert content["step"] == runs["summary"]["step"] and 0 <= content["metrics"]["accuracy"] <= 1


def test_flax_export_keeps_int8_and_hf_export_is_the_dequantised_model(runs, tmp_path, capsys):
    batch, ours = runs["batch"], runs["int8_logits"]
    export(runs["int8"], tmp_path / "flax", "flax")
    back = load_flax_export(tmp_path / "flax")
    assert isinstance(back.model, quantize.QuantizedModel)
    assert _flat(back.params)["head/kernel/qvalue"].dtype == np.int8
    np.testing.assert_array_equal(_logits(back.model, back.params, batch), ours)

    summary = export(runs["int8"], tmp_path / "hf", "hf")
    assert any("not smaller" in n and "--format=flax" in n for n in summary.notes)
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "hf", trust_remote_code=True
    ).eval()
    with torch.no_grad():
        theirs = model(**{k: torch.tensor(np.asarray(v)) for k, v in batch.items()}).logits
    np.testing.assert_allclose(theirs.numpy(), ours, atol=1e-4)


def test_a_lora_run_is_merged_then_quantised(runs):
    source, spec = runs["source"], lora.LoraSpec("query_value", rank=4, alpha=8.0)
    model = lora.with_lora(source.model, spec)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), runs["batch"]))[0]
    rng = np.random.default_rng(0)
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(source.params).items()}
    for k, v in traverse_util.flatten_dict(shapes).items():  # adapters far from zero
        if k[-1].endswith(("_lora_a", "_lora_b")):
            flat[k] = (rng.standard_normal(v.shape) / np.sqrt(v.shape[0])).astype(np.float32)
    params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()})
    record = {**source.record, "lora": spec.to_dict()}
    run = dataclasses.replace(source, model=model, params=params, record=record)
    q = quantize.quantized(run, quantize.QuantSpec())
    assert q.model.base is source.model and q.record["lora"] is None
    assert not lora.lora_paths(q.params)
    merged = lora.merge(params, spec)
    assert np.abs(_flat(merged)[QUERY] - _flat(source.params)[QUERY]).max() > 1e-2  # moved
    reference = _numpy_dequantised(merged, quantize.quantized_kernels(q.params))
    int8 = _logits(q.model, q.params, runs["batch"])
    np.testing.assert_allclose(int8, _logits(source.model, reference, runs["batch"]), atol=1e-5)
    with pytest.raises(quantize.QuantizeError, match="already quantised"):
        quantize.quantized(q, quantize.QuantSpec())


def test_a_pattern_selects_layers_and_one_matching_none_is_refused(runs):
    source = runs["source"]
    head = quantize.quantized(source, quantize.QuantSpec(pattern="head"))
    assert quantize.quantized_kernels(head.params) == ["head/kernel"]
    encoder = quantize.quantized(source, quantize.QuantSpec(pattern="all_linear"))  # lora's name
    kernels = quantize.quantized_kernels(encoder.params)
    assert len(kernels) == 12 and all(k.startswith("encoder/") for k in kernels)
    with pytest.raises(quantize.QuantizeError, match=r"matches no Dense layer.*encoder/layer_0"):
        quantize.quantized(source, quantize.QuantSpec(pattern="decoder/.*"))
    with pytest.raises(quantize.QuantizeError, match="weights is 'int4'"):
        quantize.QuantSpec(weights="int4")


class _PointwiseNet(nn.Module):
    """EfficientNet's 1x1 convolution (a dot_general on a 4-D kernel) and a Dense head."""

    @nn.compact
    def __call__(self, image, *, train: bool):
        x = PointwiseConv(4, name="conv")(image)
        return nn.Dense(2, name="head")(x.mean(axis=(1, 2)))


def test_only_dense_layers_are_quantised_not_a_1x1_convolution(runs):
    model = Model(_PointwiseNet(), ("image",), (("all", ".*"),))
    image = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3)), jnp.float32)
    params = model.init(jax.random.key(0), {"image": image})[0]
    record = {"preprocessing": {"image_size": 8}}
    run = dataclasses.replace(
        runs["source"], model=model, params=params, record=record, preprocessing={"image_size": 8}
    )
    q = quantize.quantized(run, quantize.QuantSpec())
    assert quantize.quantized_kernels(q.params) == ["head/kernel"]
    assert q.params["conv"]["kernel"].dtype == np.float32
    reference = _numpy_dequantised(params, ["head/kernel"])
    batch = {"image": image}
    np.testing.assert_allclose(
        _logits(q.model, q.params, batch), _logits(model, reference, batch), atol=1e-6
    )


def test_an_out_that_is_not_new_or_empty_is_refused_untouched(runs, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    before = snapshot(busy)
    with pytest.raises(DerivedRunError, match="not empty; give a new or empty folder"):
        quantize.quantize_run(runs["float"], busy)
    assert snapshot(busy) == before
    with pytest.raises(DerivedRunError, match="is the source run itself"):
        quantize.quantize_run(runs["float"], runs["float"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(DerivedRunError, match="is a file"):
        quantize.quantize_run(runs["float"], tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "file"]  # no stage left behind


def test_a_workdir_that_is_not_a_finished_run_is_an_inference_error(runs, tmp_path):
    with pytest.raises(InferenceError, match="does not exist"):
        quantize.quantize_run(tmp_path / "nowhere", tmp_path / "out")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["float"] / "inference", unfinished / "inference")
    with pytest.raises(InferenceError, match="not a finished run"):
        quantize.quantize_run(unfinished, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- convolutions
# `convs=True`: every convolution kernel (nn.Conv, the 1x1 convolutions done as dots, the
# depthwise ones) int8 per output channel. A half-size EfficientNet-Lite0
# (tests/arch_checkpoints.py) on 32 px, two classes, compiled as few times as the checks need
# (each compile takes seconds); MobileNetV2, built of the same three kinds of convolution,
# by its full-size shapes alone.

CLASSES = ("dark", "light")


def _image_folder(root: Path, per_class: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(40 + 150 * c + rng.integers(-30, 30, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def _he_convs(params, seed: int = 1):
    """Every convolution kernel redrawn He-normal: the package's random EfficientNet-Lite init
    shrinks the activations ~10x a block (its pooled features are ~1e-8, the logits the head's
    bias alone), so the convolutions would not show in the logits."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(params)
    for k, v in flat.items():
        if k[-1] == "kernel" and v.ndim == 4:
            fan_in = int(np.prod(v.shape[:3]))
            flat[k] = jnp.asarray(rng.standard_normal(v.shape) * np.sqrt(2 / fan_in), jnp.float32)
    return traverse_util.unflatten_dict(flat)


@pytest.fixture(scope="module")
def cnn_runs(tmp_path_factory):
    """EfficientNet-Lite as a finished run and it quantised by `quantize_run(convs=True)`,
    both loaded from disk, and a batch of images."""
    from arch_checkpoints import save_efficientnet_lite

    root = tmp_path_factory.mktemp("quantize_cnn")
    images = _image_folder(root / "images")
    saved = save_efficientnet_lite(root / "lite_checkpoint")
    pre = load_pretrained(saved.folder, len(CLASSES))
    pre = dataclasses.replace(pre, params=_he_convs(pre.params))
    c = small_config(saved.folder, root / "tfds")
    c.data.name, c.data.path = "image_folder", str(images)
    _write_finished(root / "lite", c, pre, Classification(2, label_names=CLASSES), None)
    summary = quantize.quantize_run(root / "lite", root / "lite_int8", convs=True)
    return {
        "source": inference.load_run(root / "lite"),
        "run": inference.load_run(root / "lite_int8"),
        "int8": root / "lite_int8",
        "summary": summary,
        "batch": {"image": jnp.asarray(saved.batch["image"])},
        "images": images,
    }


def test_int8_convolutions_are_per_output_channel_and_compute_as_their_round_trip(cnn_runs):
    """Every 4-D kernel (nn.Conv, the 1x1 dots, the depthwise kernels) is int8 with the numpy
    absmax scales, and so is the Dense head; batch-norm params and biases stay float32, bitwise
    the source's; the logits are the float model's on the numpy round-tripped kernels, and
    `dequantized` (the float exports) gives exactly those kernels."""
    source, run = cnn_runs["source"], cnn_runs["run"]
    convs = [f"{m}/kernel" for m in quantize.conv_modules(source.params)]
    kernels = quantize.quantized_kernels(run.params)
    assert kernels == sorted([*convs, "head/kernel"])
    flat, ours = _flat(source.params), _flat(run.params)
    depthwise = [k for k in convs if flat[k].shape[2] == 1]
    assert depthwise and len(depthwise) < len(convs)  # both kinds are there
    assert "conv_stem/kernel" in convs and flat["conv_stem/kernel"].shape[:2] == (3, 3)
    for path in kernels:
        q, scale = (_numpy_int8_conv if flat[path].ndim == 4 else _numpy_int8)(flat[path])
        assert ours[f"{path}/qvalue"].dtype == np.int8
        np.testing.assert_array_equal(ours[f"{path}/scale"], scale)
        np.testing.assert_array_equal(ours[f"{path}/qvalue"], q)
    rest = {k: v for k, v in flat.items() if k not in kernels}
    assert rest and all(ours[k].dtype == np.float32 for k in rest)
    for k, v in rest.items():
        np.testing.assert_array_equal(ours[k], v)
    reference_params = _numpy_dequantised(source.params, kernels)
    dequantised = _flat(quantize.dequantized(run).params)
    for k, v in _flat(reference_params).items():
        np.testing.assert_array_equal(dequantised[k], v)
    batch = cnn_runs["batch"]
    reference = _logits(source.model, reference_params, batch, source.model_state)
    int8 = _logits(run.model, run.params, batch, run.model_state)
    diff = np.abs(int8 - reference).max()
    print(f"int8 vs numpy dequantised {diff:.2e} (logits up to {np.abs(reference).max():.2f})")
    np.testing.assert_allclose(int8, reference, atol=1e-5 * np.abs(reference).max())
    assert np.abs(reference).max() > 0.1 and np.ptp(reference[:, 0]) > 1e-3  # inputs show


def _full_size_fraction(model, image_size: int) -> float:
    """Stored bytes of the int8 params over the float ones, from shapes alone (no arrays)."""
    batch = {"image": jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)}
    key = jax.random.key(0)
    float_params = jax.eval_shape(lambda b: model.init(key, b), batch)[0]
    spec = quantize.QuantSpec(convs=True, modules=("head",))
    int8 = jax.eval_shape(lambda b: quantize.with_quantization(model, spec).init(key, b), batch)[0]
    return quantize.stored_bytes(int8) / quantize.stored_bytes(float_params)


def test_int8_convolutions_store_at_most_30_percent_of_the_float_params(cnn_runs):
    """All params (batch-norm scales and biases, the head's bias stay float32): the small run
    as written, and the full-size EfficientNet-Lite0 and MobileNetV2 at 10 classes."""
    from ftjax.models import efficientnet, mobilenet_v2

    sizes = cnn_runs["summary"]["sizes"]
    assert sizes["quantized_bytes"] <= 0.30 * sizes["float_bytes"]
    assert quantize.stored_bytes(cnn_runs["run"].params) == sizes["quantized_bytes"]  # on disk
    spec = inference.read_record(cnn_runs["int8"])["quantization"]
    assert spec["convs"] and spec["modules"] == ["head"]
    lite0 = efficientnet.EfficientNetConfig.lite("efficientnet-lite0", num_classes=10)
    mnv2 = mobilenet_v2.MobileNetV2Config(num_classes=10)
    full = {
        "efficientnet-lite0": _full_size_fraction(efficientnet.efficientnet_lite(lite0), 224),
        "mobilenet_v2": _full_size_fraction(mobilenet_v2.mobilenet_v2(mnv2), 224),
    }
    small = sizes["quantized_bytes"] / sizes["float_bytes"]
    print(f"stored int8/float: small lite {small:.3f}, full {full}")
    assert all(f <= 0.27 for f in full.values())


def test_the_int8_cnn_workdir_evaluates_and_its_flax_export_keeps_int8(cnn_runs, tmp_path):
    """The written workdir evaluates as any run's; its flax export holds the same int8 params
    and rebuilds the same int8 model (whose forward the test above checks, loaded from the
    record as this one is)."""
    r = cnn_runs
    _, content = evaluate.run_evaluation(r["int8"], {"path": str(r["images"])}, name="int8")
    assert content["metrics"]["count"] == 8 and 0 <= content["metrics"]["accuracy"] <= 1
    export(r["int8"], tmp_path / "flax", "flax")
    back = load_flax_export(tmp_path / "flax")
    assert isinstance(back.model, quantize.QuantizedModel)
    assert back.model.spec == r["run"].model.spec and back.model.spec.convs
    assert _flat(back.params)["conv_stem/kernel/qvalue"].dtype == np.int8
    for ours, theirs in ((r["run"].params, back.params), (r["run"].model_state, back.model_state)):
        ours, theirs = _flat(ours), _flat(theirs)
        assert theirs.keys() == ours.keys()
        for k, v in theirs.items():
            np.testing.assert_array_equal(v, ours[k])


def test_convs_on_a_model_without_convolutions_is_refused(runs):
    with pytest.raises(
        quantize.QuantizeError, match="convs=True, but the model has no convolution"
    ):
        quantize.quantized(runs["source"], quantize.QuantSpec(convs=True))
