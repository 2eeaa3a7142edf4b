"""`ftjax.export`: exported models compute what ftjax computes.

For each architecture x head kind, a run is set up the cheap honest way: a tiny random
transformers (or efficientnet-lite-pytorch, torchvision MobileNetV2) checkpoint from
`arch_checkpoints`, loaded with `load_pretrained` at the run's pooling, a random O(1) head, and
the run's real inference record written by `ftjax.inference.write_record`. The export is then
loaded the way a user would (`AutoModelFor*.from_pretrained(..., output_loading_info=True)`,
`trust_remote_code=True` for mean pooling; the reference package's `load_state_dict(strict=True)`
for EfficientNet-Lite and MobileNetV2, the latter into `arch_checkpoints.TorchMobileNetV2`, as
torchvision is not installable here), with no missing, unexpected or mis-shaped keys, and its
logits on the same inputs equal ftjax's within 1e-4 (regression: ftjax's prediction in the
target's units). One real run (tiny BERT, mean
pooling, Rotten Tomatoes: the default experiment's shape) goes through `train.run`, the command
line, `transformers.pipeline` and the Flax round trip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import shutil
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from arch_checkpoints import (
    FACTORIES,
    TorchMobileNetV2,
    save_deberta_v2,
    save_roberta,
    save_wordpiece_tokenizer,
)
from etils import epath
from flax import traverse_util
from PIL import Image
from train_fixtures import assert_bitwise_equal, data_dir, small_config, tiny_bert  # noqa: F401

from ftjax import inference, train
from ftjax.config import defaults
from ftjax.data.images import RESIZE_RATIO, ImagePreprocessor
from ftjax.data.tokenize import TextEncoder
from ftjax.export import ExportError, common, export, export_run, families, load_flax_export
from ftjax.export import __main__ as cli
from ftjax.pretrained import registry
from ftjax.pretrained.load import load_pretrained
from ftjax.tasks import Classification, ExtractiveQA, MultiLabel, Regression, TokenClassification

TOL = 1e-4
TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
WORDS = "the cat sat on a mat while alice met bob in paris and london".split()
# Exercises the target units: the exported head must undo (y - 3) / 2.5.
REGRESSION = Regression(target_mean=3.0, target_std=2.5)


def _task(name: str):
    return {
        "classification": Classification(3, label_names=("neg", "neutral", "pos")),
        "multi_label": MultiLabel(label_names=("a", "b", "c", "d")),
        "regression": REGRESSION,
        "token_classification": TokenClassification(tag_names=TAGS),
        "extractive_qa": ExtractiveQA(),
    }[name]


def _loud_head(params, seed: int = 1):
    """The head re-drawn at std 1/sqrt(fan in) (bias 0.1), so logits are O(1) and 1e-4 means
    something (a fresh 0.02-init head gives logits ~1e-3)."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(dict(params))
    for key, value in flat.items():
        if key[0] == "head":
            scale = 1 / np.sqrt(value.shape[0]) if key[-1] == "kernel" else 0.1
            flat[key] = jnp.asarray(rng.standard_normal(value.shape) * scale, jnp.float32)
    return traverse_util.unflatten_dict(flat)


def _calibrate_batch_norm(saved) -> None:
    """The checkpoint re-saved with batch-norm statistics of a random batch (one train-mode pass,
    cumulative averages): a random init's 0/1 statistics let a deep net's features shrink to a
    constant (EfficientNet-Lite's logits would be the same for every image), testing nothing."""
    model = saved.reference
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    images = np.random.default_rng(1).standard_normal((4, *saved.batch["image"].shape[1:]))
    with torch.no_grad():
        model.train()(torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32)))
    model.eval()
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(saved.folder)
    else:
        torch.save(model.state_dict(), saved.weights)


def _make_run(saved, task, pooling: str, tmp_path) -> inference.Run:
    """A Run as load_run returns it, from a checkpoint, a random head and a real record."""
    pooling = "tokens" if task.output_level == "token" else pooling
    if "input_ids" in saved.batch:  # a run reads text with its checkpoint's tokenizer
        size = save_wordpiece_tokenizer(saved.folder, [" ".join(WORDS)] * 4, vocab_size=80)
        assert size <= saved.reference.config.vocab_size
    else:
        _calibrate_batch_norm(saved)
    pre = load_pretrained(saved.folder, num_classes=task.output_size, pooling=pooling)
    config = defaults()
    config.model.source = str(saved.folder)
    config.model.pooling = "mean" if pooling == "mean" else "cls"
    config.data.label_key = "score"
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    inference.write_record(epath.Path(workdir), config, pre, task, max_length=24)
    record = inference.read_record(workdir)
    preprocessing = dict(record["preprocessing"])
    if "tokenizer_file" in preprocessing:
        preprocessing["tokenizer_file"] = str(
            workdir / "inference" / preprocessing["tokenizer_file"]
        )
    params = _loud_head(pre.params)
    return inference.Run(
        workdir, pre.model, params, pre.state, task, preprocessing, record, "best", 7
    )


def _ftjax_outputs(run: inference.Run, batch) -> np.ndarray:
    """ftjax's logits (regression: its prediction in the target's units)."""
    inputs = {
        k: jnp.asarray(v, jnp.float32 if k == "image" else jnp.int32) for k, v in batch.items()
    }
    apply = jax.jit(lambda p, s, b: run.model.apply(p, s, b, train=False)[0])
    logits = np.asarray(apply(run.params, run.model_state, inputs))
    return (
        run.task.denormalise(logits).astype(np.float32) if run.task.name == "regression" else logits
    )


def _hf_load(out, auto_class: str, trust: bool = False):
    model, info = getattr(transformers, auto_class).from_pretrained(
        out, output_loading_info=True, trust_remote_code=trust
    )
    problems = {k: v for k, v in info.items() if k != "error_msgs" and v}
    assert not problems, problems
    return model.eval()


def _torch_outputs(model, batch) -> np.ndarray:
    accepted = inspect.signature(model.forward).parameters
    if "image" in batch:
        inputs = {"pixel_values": torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy())}
    else:
        inputs = {k: torch.as_tensor(v) for k, v in batch.items() if k in accepted}
    with torch.no_grad():
        out = model(**inputs)
    if hasattr(out, "start_logits"):
        return np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)
    return out.logits.numpy()


def _max_diff(ours, theirs) -> float:
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max())


CHECKPOINTS = {
    **FACTORIES,
    "xlm_roberta": functools.partial(save_roberta, xlm=True),
    # A DebertaV2ForSequenceClassification file in v2's layout: its pooler loads and exports
    # beside the base model, the ConvLayer's Conv1d exports transposed back.
    "deberta_v2_pooled": functools.partial(
        save_deberta_v2,
        head=True,
        position_biased_input=True,
        type_vocab_size=2,
        share_att_key=False,
        norm_rel_ebd="none",
        conv_kernel_size=3,
    ),
}
AUTO = {
    "classification": "AutoModelForSequenceClassification",
    "multi_label": "AutoModelForSequenceClassification",
    "regression": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "extractive_qa": "AutoModelForQuestionAnswering",
}

# (architecture, task, pooling, expected class): every head kind, on BERT; the two-layer heads
# and mean pooling on the other text encoders; the image classifiers.
CASES = [
    ("bert", "classification", "cls", "BertForSequenceClassification"),
    ("bert", "classification", "mean", "BertMeanPoolingForSequenceClassification"),
    ("bert", "multi_label", "cls", "BertForSequenceClassification"),
    ("bert", "regression", "cls", "BertForSequenceClassification"),
    ("bert", "regression", "mean", "BertMeanPoolingForSequenceClassification"),
    ("bert", "token_classification", "tokens", "BertForTokenClassification"),
    ("bert", "extractive_qa", "tokens", "BertForQuestionAnswering"),
    ("roberta", "classification", "cls", "RobertaForSequenceClassification"),
    ("roberta", "classification", "mean", "RobertaMeanPoolingForSequenceClassification"),
    ("roberta", "extractive_qa", "tokens", "RobertaForQuestionAnswering"),
    ("xlm_roberta", "classification", "mean", "XLMRobertaMeanPoolingForSequenceClassification"),
    ("xlm_roberta", "token_classification", "tokens", "XLMRobertaForTokenClassification"),
    ("electra", "regression", "cls", "ElectraForSequenceClassification"),
    ("electra", "classification", "mean", "ElectraMeanPoolingForSequenceClassification"),
    ("distilbert", "multi_label", "cls", "DistilBertForSequenceClassification"),
    ("distilbert", "classification", "mean", "DistilBertMeanPoolingForSequenceClassification"),
    ("distilbert", "token_classification", "tokens", "DistilBertForTokenClassification"),
    ("albert", "classification", "cls", "AlbertForSequenceClassification"),
    ("albert", "classification", "mean", "AlbertMeanPoolingForSequenceClassification"),
    ("albert", "token_classification", "tokens", "AlbertForTokenClassification"),
    ("deberta_v2", "classification", "cls", "DebertaV2ForSequenceClassification"),
    ("deberta_v2", "classification", "mean", "DebertaV2MeanPoolingForSequenceClassification"),
    ("deberta_v2", "token_classification", "tokens", "DebertaV2ForTokenClassification"),
    ("deberta_v2_pooled", "regression", "cls", "DebertaV2ForSequenceClassification"),
    ("vit", "classification", "cls", "ViTForImageClassification"),
    ("resnet", "classification", "cls", "ResNetForImageClassification"),
    ("resnet", "regression", "cls", "ResNetForImageClassification"),
    ("convnext", "multi_label", "cls", "ConvNextForImageClassification"),
]


@pytest.mark.parametrize("arch,task_name,pooling,cls", CASES, ids=lambda v: str(v))
def test_hf_export_loads_cleanly_and_matches_ftjax(arch, task_name, pooling, cls, tmp_path):
    saved = CHECKPOINTS[arch](tmp_path / "checkpoint")
    run = _make_run(saved, _task(task_name), pooling, tmp_path)
    summary = export_run(run, tmp_path / "export", "hf")
    assert summary.model_class == cls
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["architectures"] == [cls]
    names = common.id2label(run.task, run.record)
    assert config["id2label"] == {str(i): n for i, n in names.items()}
    assert config.get("problem_type") == common.problem_type(run.task)
    custom = pooling == "mean"
    assert ("auto_map" in config) == custom
    image = families.FAMILIES[run.arch].kind == "image"
    auto = "AutoModelForImageClassification" if image else AUTO[task_name]
    model = _hf_load(tmp_path / "export", auto, trust=custom)
    assert type(model).__name__ == cls
    diff = _max_diff(_ftjax_outputs(run, saved.batch), _torch_outputs(model, saved.batch))
    print(f"{arch} {task_name} {pooling}: max abs diff {diff:.2e}")
    assert diff < TOL


def test_mean_pooling_export_says_the_stock_class_would_differ(tmp_path):
    saved = FACTORIES["bert"](tmp_path / "checkpoint")
    run = _make_run(saved, _task("classification"), "mean", tmp_path)
    summary = export_run(run, tmp_path / "export", "hf")
    note = " ".join(summary.notes)
    assert "trust_remote_code=True" in note and "silently" in note and "pooler" in note
    readme = (tmp_path / "export" / "README.md").read_text()
    assert "trust_remote_code=True" in readme and "silently" in readme
    assert "modeling_ftjax_pooling.py" in summary.files
    exec(summary.load, {})  # the printed snippet: model, pipeline and one prediction
    # The pooler mean pooling never reads is not exported: the stock class, loaded without
    # trust_remote_code, reports it newly initialised rather than silently using it.
    stock, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "export", output_loading_info=True
    )
    assert type(stock).__name__ == "BertForSequenceClassification"
    assert {k for k in info["missing_keys"]} == {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
    }


def test_efficientnet_lite_export_loads_strictly_in_the_reference_package(tmp_path):
    from efficientnet_lite_pytorch import EfficientNet
    from safetensors.torch import load_file

    saved = FACTORIES["efficientnet_lite"](tmp_path / "checkpoint")
    run = _make_run(saved, _task("classification"), "cls", tmp_path)
    summary = export_run(run, tmp_path / "export", "hf")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["from_name"]["num_classes"] == 3 and config["id2label"]["2"] == "pos"
    model = EfficientNet.from_name(config["model_name"], **config["from_name"])
    model.load_state_dict(load_file(tmp_path / "export" / "model.safetensors"), strict=True)
    model.eval()
    x = torch.from_numpy(saved.batch["image"].transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        theirs = model(x).numpy()
    diff = _max_diff(_ftjax_outputs(run, saved.batch), theirs)
    print(f"efficientnet_lite classification: max abs diff {diff:.2e}")
    assert diff < TOL
    assert "load_state_dict" in summary.load and "strict=True" in summary.load


def test_mobilenet_v2_export_loads_in_torchvisions_layout_and_back_into_ftjax(
    tmp_path, monkeypatch
):
    """torchvision cannot be installed here: the printed snippet runs with `TorchMobileNetV2`
    (torchvision's module in plain torch: its keys and forward) as
    `torchvision.models.mobilenet_v2`, and ftjax's loader reads the folder back unchanged."""
    from safetensors.numpy import load_file

    saved = FACTORIES["mobilenet_v2"](tmp_path / "checkpoint")  # width 0.6, no config.json
    run = _make_run(saved, _task("classification"), "cls", tmp_path)
    out = tmp_path / "export"
    summary = export_run(run, out, "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 3 and config["width_mult"] == 0.6
    assert config["id2label"]["2"] == "pos"
    assert "model_type" not in config  # transformers would build its own, TF-ported MobileNetV2
    torchvision = types.ModuleType("torchvision")
    torchvision.models = types.SimpleNamespace(mobilenet_v2=TorchMobileNetV2)
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    namespace: dict = {}
    exec(summary.load, namespace)  # load_state_dict(..., strict=True)
    x = torch.from_numpy(saved.batch["image"].transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        theirs = namespace["model"](x).numpy()
    ours = _ftjax_outputs(run, saved.batch)
    diff = _max_diff(ours, theirs)
    print(f"mobilenet_v2 classification: max abs diff {diff:.2e}")
    assert diff < TOL and np.abs(theirs[0] - theirs[1]).max() > 0.1  # not a constant output

    back = load_pretrained(out, num_classes=3)
    weights = load_file(out / "model.safetensors")
    assert back.arch == "mobilenet_v2" and back.config["width_mult"] == 0.6
    assert sorted(back.report.reinitialised) == ["head/bias", "head/kernel"]
    assert sorted(back.report.ignored) == sorted(
        k for k in weights if k.startswith("classifier.") or k.endswith("num_batches_tracked")
    )
    head = {"kernel": weights["classifier.1.weight"].T, "bias": weights["classifier.1.bias"]}
    params = {**back.params, "head": jax.tree.map(jnp.asarray, head)}
    assert_bitwise_equal(params, run.params, "params")
    assert_bitwise_equal(back.state, run.model_state, "batch-norm statistics")
    reloaded = dataclasses.replace(run, model=back.model, params=params, model_state=back.state)
    np.testing.assert_array_equal(_ftjax_outputs(reloaded, saved.batch), ours)


def test_image_processor_config_is_ftjax_eval_preprocessing(tmp_path):
    assert RESIZE_RATIO == common._RESIZE_RATIO
    mean, std = (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)
    prep = {"image_size": 32, "mean": mean, "std": std}
    common.write_json(tmp_path / "preprocessor_config.json", common.image_processor_config(prep))
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 255, (8, 6, 3), np.uint8)).resize((47, 61)))
    ours = ImagePreprocessor(32, mean, std, "none").eval(smooth)
    theirs = processor(Image.fromarray(smooth), return_tensors="np")["pixel_values"][0]
    assert _max_diff(ours, theirs.transpose(1, 2, 0)) < 1e-4


def _tokenized_run(tmp_path, arch: str, task_name: str):
    return _make_run(FACTORIES[arch](tmp_path / "checkpoint"), _task(task_name), "tokens", tmp_path)


def test_token_classification_pipeline_returns_the_runs_tags(tmp_path):
    run = _tokenized_run(tmp_path, "bert", "token_classification")
    summary = export_run(run, tmp_path / "export", "hf")
    tagger = transformers.pipeline(
        "token-classification", model=str(tmp_path / "export"), ignore_labels=[]
    )
    found = tagger("alice met bob in paris")
    assert found and {e["entity"] for e in found} <= set(TAGS)
    exec(summary.load, {})  # the printed snippet (aggregation_strategy="first") runs
    # The pipeline's tokens are ftjax's (the run's tokenizer, as exported).
    encoder = TextEncoder(run.preprocessing["tokenizer_file"], 24)
    ids = tagger.tokenizer("alice met bob in paris")["input_ids"]
    np.testing.assert_array_equal(ids, encoder.encode("alice met bob in paris")["input_ids"])


def test_question_answering_export_runs_its_printed_snippet(tmp_path):
    """transformers 5 has no question-answering pipeline: the snippet uses the model itself."""
    run = _tokenized_run(tmp_path, "bert", "extractive_qa")
    summary = export_run(run, tmp_path / "export", "hf")
    assert "no question-answering pipeline" in " ".join(summary.notes)
    namespace: dict = {}
    exec(summary.load, namespace)
    tokens = namespace["inputs"]["input_ids"].shape[1]
    assert (
        namespace["outputs"].start_logits.shape
        == namespace["outputs"].end_logits.shape
        == (1, tokens)
    )


def test_image_classification_pipeline_returns_the_runs_labels(tmp_path):
    saved = FACTORIES["vit"](tmp_path / "checkpoint")
    run = _make_run(saved, _task("classification"), "cls", tmp_path)
    summary = export_run(run, tmp_path / "export", "hf")
    classify = transformers.pipeline("image-classification", model=str(tmp_path / "export"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), np.uint8))
    assert {r["label"] for r in classify(image, top_k=None)} == {"neg", "neutral", "pos"}
    image.save(tmp_path / "image.jpg")
    with contextlib.chdir(tmp_path):
        exec(summary.load, {})  # the printed snippet, on the "image.jpg" it names


def test_flax_export_round_trips(tmp_path):
    saved = FACTORIES["resnet"](tmp_path / "checkpoint")  # params and batch-norm state
    run = _make_run(saved, _task("regression"), "cls", tmp_path)
    export_run(run, tmp_path / "export", "flax")
    back = load_flax_export(tmp_path / "export")
    assert_bitwise_equal(back.params, run.params, "params")
    assert_bitwise_equal(back.model_state, run.model_state, "model state")
    assert back.task == run.task and back.record == run.record and back.step == 7
    np.testing.assert_array_equal(
        _ftjax_outputs(back, saved.batch), _ftjax_outputs(run, saved.batch)
    )


# ----------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def finished_run(tiny_bert, data_dir, tmp_path_factory):
    """Tiny BERT, mean pooling, Rotten Tomatoes, 3 steps: the default experiment's shape."""
    config = small_config(
        tiny_bert,
        data_dir,
        plan__phases=(dict(name="all", trainable="all", lr=1e-3),),
        train__steps=3,
        train__eval_every_steps=3,
        train__checkpoint_every_steps=3,
        data__train_examples=48,
        data__eval_examples=32,
    )
    workdir = tmp_path_factory.mktemp("export_run") / "run"
    train.run(config, workdir)
    return workdir


def test_cli_exports_the_default_experiment_and_pipeline_runs(finished_run, tmp_path, capsys):
    out = tmp_path / "hf"
    assert cli.main([f"--workdir={finished_run}", f"--out={out}", "--format=hf"]) == 0
    printed = capsys.readouterr().out
    assert "BertMeanPoolingForSequenceClassification" in printed
    assert "trust_remote_code=True" in printed and "silently" in printed
    run = inference.load_run(finished_run, "best")
    assert {"tokenizer.json", "vocab.txt", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }

    model = _hf_load(out, "AutoModelForSequenceClassification", trust=True)
    texts = ["a gripping, funny film", "dull and far too long " * 6, "meh"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    hf_batch = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
    # HF's tokens are ftjax's, truncation at the run's max_length included.
    encoder = TextEncoder(run.preprocessing["tokenizer_file"], run.preprocessing["max_length"])
    for row, text in enumerate(texts):
        ids = encoder.encode(text)["input_ids"]
        np.testing.assert_array_equal(hf_batch["input_ids"][row, : len(ids)], ids)
    batch = {k: hf_batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    diff = _max_diff(_ftjax_outputs(run, batch), _torch_outputs(model, batch))
    print(f"real run bert classification mean: max abs diff {diff:.2e}")
    assert diff < TOL

    classify = transformers.pipeline("text-classification", model=str(out), trust_remote_code=True)
    scores = classify(texts[0], top_k=None)
    assert {s["label"] for s in scores} == set(run.task.label_names)
    probs = np.asarray(jax.nn.softmax(_ftjax_outputs(run, {k: v[:1] for k, v in batch.items()})))[0]
    by_label = {s["label"]: s["score"] for s in scores}
    np.testing.assert_allclose([by_label[n] for n in run.task.label_names], probs, atol=1e-4)


def test_flax_export_of_a_real_run_round_trips(finished_run, tmp_path):
    summary = export(finished_run, tmp_path / "flax", "flax", checkpoint="final")
    assert "load_flax_export" in summary.load
    run, back = inference.load_run(finished_run, "final"), load_flax_export(tmp_path / "flax")
    assert_bitwise_equal(back.params, run.params, "params")
    assert back.task == run.task and back.step == run.step and back.checkpoint == "final"
    assert back.record == run.record and back.kind == "text"
    encoder = TextEncoder(back.preprocessing["tokenizer_file"], back.preprocessing["max_length"])
    batch = encoder.collate([encoder.encode("a fine film"), encoder.encode("not good at all")])
    np.testing.assert_array_equal(_ftjax_outputs(back, batch), _ftjax_outputs(run, batch))


# `python -m ftjax.export` (runpy is what -m runs), then a check that exporting for PyTorch never
# imported torch: ftjax writes safetensors with numpy.
_MAIN_WITHOUT_TORCH = """
import runpy, sys
sys.argv = ["ftjax.export", *sys.argv[1:]]
try:
    runpy.run_module("ftjax.export", run_name="__main__", alter_sys=True)
except SystemExit as e:
    assert e.code in (0, None), e.code
assert "torch" not in sys.modules, "the export imported torch"
"""


@pytest.mark.slow
def test_python_dash_m_exports_without_importing_torch(finished_run, tmp_path):
    import subprocess

    from train_fixtures import REPO, cli_env

    flags = [f"--workdir={finished_run}", f"--out={tmp_path / 'x'}", "--format=hf"]
    out = subprocess.run(
        [sys.executable, "-c", _MAIN_WITHOUT_TORCH, *flags],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=cli_env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "BertMeanPoolingForSequenceClassification" in out.stdout
    assert (tmp_path / "x" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_problem(finished_run, tmp_path, capsys):
    with pytest.raises(
        ExportError, match=r"unknown export format 'onnx'; use one of \['hf', 'flax', 'peft'\]"
    ):
        export(finished_run, tmp_path / "a", "onnx")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(ExportError, match="exists and is not empty.*--overwrite"):
        export(finished_run, tmp_path / "full", "flax")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    export(finished_run, tmp_path / "full", "flax", overwrite=True)
    assert (
        not (tmp_path / "full" / "x").exists()
        and (tmp_path / "full" / "params.safetensors").exists()
    )
    unfinished = tmp_path / "unfinished"  # its record, but no results.json yet
    shutil.copytree(finished_run / "inference", unfinished / "inference")
    with pytest.raises(ExportError, match="is not a finished run"):
        export(unfinished, tmp_path / "b", "hf")
    with pytest.raises(ExportError, match="does not exist"):
        export(tmp_path / "nowhere", tmp_path / "b", "hf")
    with pytest.raises(ExportError, match="not an ftjax run"):
        export(tmp_path / "full", tmp_path / "b", "hf")
    assert not (tmp_path / "b").exists()
    assert cli.main([f"--workdir={unfinished}", f"--out={tmp_path / 'c'}", "--format=hf"]) == 1
    assert "is not a finished run" in capsys.readouterr().err


def test_an_unsupported_pair_names_what_is_supported(tmp_path):
    saved = FACTORIES["vit"](tmp_path / "checkpoint")
    run = _make_run(saved, _task("classification"), "cls", tmp_path)
    fake = dataclasses.replace(run, record={**run.record, "arch": "gpt2"})
    with pytest.raises(
        ExportError, match=r"does not export architecture 'gpt2'.*bert: classification"
    ):
        export_run(fake, tmp_path / "export", "hf")
    assert not (tmp_path / "export").exists()
    tagging = dataclasses.replace(run, task=TokenClassification(tag_names=TAGS))
    with pytest.raises(
        ExportError,
        match=r"the 'token_classification' task on 'vit'.*vit: classification, multi_label, "
        "regression",
    ):
        export_run(tagging, tmp_path / "export", "hf")


def test_every_export_family_is_a_registered_architecture():
    assert set(families.FAMILIES) <= set(registry.architectures())


def test_a_param_without_exactly_one_rule_is_an_error_naming_it():
    from ftjax.export import state_dict

    leaves = {
        "head/kernel": np.ones((2, 3), np.float32),
        "head/bias": np.ones(3, np.float32),
        "extra/bias": np.ones(3, np.float32),
    }
    rules = [(families.dense_rules("head", "classifier"), "")]
    with pytest.raises(ExportError, match="extra/bias matches 0 key rules"):
        state_dict.to_torch(leaves, rules)
    twice = [
        (
            families.dense_rules("head", "classifier")
            + [("extra/bias", "classifier.bias", "copy")],
            "",
        )
    ]
    with pytest.raises(ExportError, match="both map to classifier.bias"):
        state_dict.to_torch(leaves, twice)
    weights = state_dict.to_torch(leaves, rules, skip=["extra/.*"])
    assert weights["classifier.weight"].shape == (3, 2)
