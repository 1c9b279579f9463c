"""The torch-free `.pth` reader returns exactly what torch saved and refuses unsafe or broken files without running
them; torch is used here only to write checkpoints and to give the expected values."""

import builtins
import collections
import io
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from sam_jax.weights.torch_checkpoint import UnsafeCheckpointError, read_torch_checkpoint


def saved(tmp_path, obj, name="ckpt", **kwargs):
    path = tmp_path / f"{name}.pth"
    torch.save(obj, path, **kwargs)
    return path


def expected_array(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().resolve_conj().resolve_neg()
    if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16: compare the bits through ml_dtypes
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def assert_same_tensors(arrays, tensors):
    assert list(arrays) == list(tensors)
    for name, tensor in tensors.items():
        want = expected_array(tensor)
        got = arrays[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        assert got.tobytes() == np.ascontiguousarray(want).tobytes(), name


def rewritten(src, dst, changes):
    """Copies the zip `src` to `dst`, replacing records named in `changes` (None drops the record)."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as new:
        for name in old.namelist():
            data = changes.get(name, old.read(name))
            if data is not None:
                new.writestr(name, data)
    return dst


def checkpoint_zip(path, pickle_bytes, storages=None):
    """Writes the zip layout of torch.save around a hand-made data.pkl."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/byteorder", b"little")
        archive.writestr("archive/version", b"3\n")
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)
    return path


class FakeStorage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class FakeTensor:
    """Pickles exactly like a float32 tensor, with whatever geometry a test wants."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def torch_like_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    TorchLikePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def many_dtypes():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=generator)
    complex_base = torch.randn(3, dtype=torch.complex64, generator=generator)
    return {
        "float32": base,
        "float16": torch.randn(5, 3, generator=generator).half(),
        "bfloat16": torch.randn(2, 7, generator=generator).bfloat16(),
        "float64": torch.randn(3, generator=generator).double(),
        "int64": torch.randint(-(2**40), 2**40, (6,), generator=generator),
        "int32": torch.randint(-1000, 1000, (2, 2), generator=generator, dtype=torch.int32),
        "int8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "uint8": torch.tensor([0, 1, 255], dtype=torch.uint8),
        "uint16": torch.tensor([0, 1, 65535], dtype=torch.uint16),  # saved with _rebuild_tensor_v3
        "bool": torch.tensor([[True, False], [False, True]]),
        "complex64": complex_base,
        "conjugated": complex_base.conj(),
        "negated": torch._neg_view(base[0]),
        "transposed": base.t(),
        "offset_view": base[1:3, 2:5],
        "expanded": base[0, :3].expand(2, 3),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
    }


def test_round_trip_matches_torch_bit_for_bit(tmp_path, many_dtypes):
    arrays = read_torch_checkpoint(saved(tmp_path, collections.OrderedDict(many_dtypes)))
    assert_same_tensors(arrays, many_dtypes)


def test_arrays_are_independent_writable_copies(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    arrays = read_torch_checkpoint(saved(tmp_path, {"whole": base, "tail": base[1:], "transposed": base.t()}))
    for array in arrays.values():
        assert array.flags.c_contiguous and array.flags.writeable
    arrays["whole"][...] = -1
    np.testing.assert_array_equal(arrays["tail"], base[1:].numpy())
    np.testing.assert_array_equal(arrays["transposed"], base.t().numpy())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda state: state,
        lambda state: {"state_dict": state, "epoch": 3},
        lambda state: {"model": state, "optimizer": {"lr": 1e-4, "step": torch.tensor(7)}},
    ],
    ids=["raw", "state_dict", "model"],
)
def test_parameters_and_wrapped_state_dicts(tmp_path, wrap):
    state = {"weight": torch.nn.Parameter(torch.randn(3, 2)), "bias": torch.nn.Parameter(torch.zeros(3))}
    assert_same_tensors(read_torch_checkpoint(saved(tmp_path, wrap(state))), state)


def test_small_model_state_dict_reads_back_identically(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.GELU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 5 * 5, 2),
        torch.nn.LayerNorm(2),
    )
    model(torch.randn(2, 3, 5, 5))  # moves BatchNorm's running statistics and its int64 batch counter
    state = model.state_dict()
    assert_same_tensors(read_torch_checkpoint(saved(tmp_path, state)), state)


class CallsOnLoad:
    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize(
    "function, command",
    [
        (os.system, "touch {marker}"),
        (builtins.eval, "open({marker!r}, 'w').close()"),
    ],
    ids=["os.system", "builtins.eval"],
)
def test_code_in_the_pickle_is_refused_without_running(tmp_path, function, command):
    def payload(marker):
        return pickle.dumps({"weight": CallsOnLoad(function, command.format(marker=str(marker)))}, protocol=2)

    live_marker = tmp_path / "proof_the_payload_runs"
    pickle.loads(payload(live_marker))
    assert live_marker.exists()

    marker = tmp_path / "must_not_exist"
    path = checkpoint_zip(tmp_path / "evil.pth", payload(marker))
    with pytest.raises(UnsafeCheckpointError) as error:
        read_torch_checkpoint(path)
    message = str(error.value)
    assert f"{function.__module__}.{function.__name__}" in message
    assert "without being executed" in message and str(path) in message
    assert not marker.exists()


def test_truncated_zip(tmp_path):
    whole = saved(tmp_path, {"weight": torch.randn(64, 64)}).read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UnsafeCheckpointError, match="truncated or corrupt zip") as error:
        read_torch_checkpoint(path)
    assert str(path) in str(error.value)


def test_corrupt_storage_bytes_fail_the_crc(tmp_path):
    path = saved(tmp_path, {"weight": torch.zeros(256)})
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("ckpt/data/0")
    raw = bytearray(path.read_bytes())
    local_header = raw[info.header_offset : info.header_offset + 30]
    data_start = (
        info.header_offset
        + 30
        + int.from_bytes(local_header[26:28], "little")
        + int.from_bytes(local_header[28:30], "little")
    )
    raw[data_start + 100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(UnsafeCheckpointError, match="ckpt/data/0 is corrupt"):
        read_torch_checkpoint(path)


@pytest.mark.parametrize(
    "content, fault",
    [
        (b"\x00" + bytes(range(256)) * 4, "not a PyTorch checkpoint"),
        (b"model weights, honestly\n", "not a PyTorch checkpoint"),
        (b"", "not a PyTorch checkpoint"),
    ],
    ids=["binary", "text", "empty"],
)
def test_not_a_zip(tmp_path, content, fault):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(UnsafeCheckpointError, match=fault):
        read_torch_checkpoint(path)


def test_legacy_format_is_named_with_a_way_out(tmp_path):
    path = saved(tmp_path, {"weight": torch.ones(2)}, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match=r"legacy \(pre-1.6\).*torch.save\(torch.load"):
        read_torch_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(UnsafeCheckpointError, match="cannot open"):
        read_torch_checkpoint(tmp_path / "absent.pth")


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "other.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(UnsafeCheckpointError, match="no <name>/data.pkl"):
        read_torch_checkpoint(path)


def test_missing_storage_record(tmp_path):
    source = saved(tmp_path, {"a": torch.ones(3), "b": torch.ones(4)})
    path = rewritten(source, tmp_path / "holed.pth", {"ckpt/data/1": None})
    with pytest.raises(UnsafeCheckpointError, match="storage record ckpt/data/1 is missing"):
        read_torch_checkpoint(path)


def test_storage_record_shorter_than_declared(tmp_path):
    source = saved(tmp_path, {"a": torch.ones(8)})
    path = rewritten(source, tmp_path / "short.pth", {"ckpt/data/0": bytes(16)})
    with pytest.raises(UnsafeCheckpointError, match="holds 16 bytes but the pickle declares 32"):
        read_torch_checkpoint(path)


@pytest.mark.parametrize(
    "offset, size, stride",
    [
        (0, (5,), (1,)),  # longer than the storage
        (2, (3,), (1,)),  # offset pushes the end past it
        (0, (2, 2), (3, 1)),  # last element at 3 + 1 = 4
    ],
    ids=["size", "offset", "stride"],
)
def test_tensor_reaching_past_its_storage(tmp_path, offset, size, stride):
    storage = FakeStorage("0", 4)
    pickled = torch_like_pickle(
        {"fits": FakeTensor(storage, 0, (2, 2), (2, 1)), "overruns": FakeTensor(storage, offset, size, stride)}
    )
    path = checkpoint_zip(tmp_path / "overrun.pth", pickled, {"0": np.arange(4, dtype="<f4").tobytes()})
    with pytest.raises(UnsafeCheckpointError, match="tensor 'overruns'.*holds 4"):
        read_torch_checkpoint(path)


def test_hand_made_pickle_reads_like_torch(tmp_path):
    storage = FakeStorage("0", 6)
    pickled = torch_like_pickle(
        {"rows": FakeTensor(storage, 0, (2, 3), (3, 1)), "column": FakeTensor(storage, 1, (2,), (3,))}
    )
    path = checkpoint_zip(tmp_path / "made.pth", pickled, {"0": np.arange(6, dtype="<f4").tobytes()})
    arrays = read_torch_checkpoint(path)
    np.testing.assert_array_equal(arrays["rows"], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(arrays["column"], [1, 4])


@pytest.mark.parametrize(
    "tree, fault",
    [
        ({"weight": torch.ones(2), "step": 3}, "entry 'step' of its state dict is a int"),
        ({"state_dict": {"weight": [1.0, 2.0]}}, "entry 'weight' of its state dict is a list"),
        ([torch.ones(2)], "holds a list, not a state dict"),
    ],
    ids=["int", "list", "top-level list"],
)
def test_non_tensor_leaves(tmp_path, tree, fault):
    with pytest.raises(UnsafeCheckpointError, match=fault):
        read_torch_checkpoint(saved(tmp_path, tree))


def test_unknown_byteorder(tmp_path):
    source = saved(tmp_path, {"a": torch.ones(2)})
    path = rewritten(source, tmp_path / "odd.pth", {"ckpt/byteorder": b"middle"})
    with pytest.raises(UnsafeCheckpointError, match="unknown byte order b'middle'"):
        read_torch_checkpoint(path)


def test_big_endian_storages(tmp_path, many_dtypes):
    names = ["float32", "bfloat16", "int64", "complex64", "bool"]
    tensors = {name: many_dtypes[name] for name in names}
    source = saved(tmp_path, tensors)
    swap_units = {"float32": "u4", "bfloat16": "u2", "int64": "u8", "complex64": "u4", "bool": "u1"}
    changes = {"ckpt/byteorder": b"big"}
    with zipfile.ZipFile(source) as archive:
        for key, name in enumerate(names):  # torch.save numbers storages in the order it meets them
            little = archive.read(f"ckpt/data/{key}")
            assert little == bytes(tensors[name].untyped_storage())
            changes[f"ckpt/data/{key}"] = np.frombuffer(little, swap_units[name]).byteswap().tobytes()
    arrays = read_torch_checkpoint(rewritten(source, tmp_path / "big.pth", changes))
    assert_same_tensors(arrays, tensors)
