"""Read PyTorch checkpoints (`.pth` zips written by `torch.save`) into NumPy without torch and without running the
pickle: a restricted unpickler admits only tensor rebuild functions, storage types, dtypes and `OrderedDict`, all
mapped to harmless stand-ins here, and the tensors are rebuilt from the raw storages in the zip; any other global is
refused before anything is called."""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import os
import pickle
import zipfile
import zlib
from typing import Any, Callable, NamedTuple

import ml_dtypes
import numpy as np

from sam_jax.weights.params import WeightsError


class UnsafeCheckpointError(WeightsError):
    """A checkpoint that cannot be read safely; the message names the file and the fault."""


class _Fault(Exception):
    """A fault found inside the archive; `read_torch_checkpoint` prefixes the file name."""


_NUMPY_DTYPES = {  # torch dtype name -> NumPy dtype
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "complex128": np.dtype(np.complex128),
    "complex64": np.dtype(np.complex64),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint64": np.dtype(np.uint64),
    "uint32": np.dtype(np.uint32),
    "uint16": np.dtype(np.uint16),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}

_STORAGE_DTYPES = {  # legacy typed storage class -> torch dtype name; UntypedStorage holds raw bytes
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "UntypedStorage": "uint8",
}


# The pickle only ever sees these immutable stand-ins (NamedTuples have no __dict__ and read-only fields), so its
# BUILD/SETITEM opcodes cannot alter them between loads.
class _StorageType(NamedTuple):
    dtype: np.dtype


class _TorchDtype(NamedTuple):
    dtype: np.dtype


class _StorageRef(NamedTuple):
    key: str
    dtype: np.dtype
    nbytes: int


class _TensorRef(NamedTuple):
    storage: _StorageRef
    dtype: np.dtype
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    conjugate: bool
    negate: bool


class _RebuildFunction(NamedTuple):
    rebuild: Callable[..., _TensorRef]

    def __call__(self, *args: Any) -> _TensorRef:
        return self.rebuild(*args)


def _tensor_ref(storage, offset, shape, strides, dtype=None, metadata=None) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise _Fault("a tensor is rebuilt from something that is not a storage of this archive")
    if not (
        _is_index(offset)
        and isinstance(shape, tuple)
        and isinstance(strides, tuple)
        and len(shape) == len(strides)
        and all(map(_is_index, shape + strides))
    ):
        raise _Fault(f"a tensor has malformed geometry: offset {offset!r}, size {shape!r}, stride {strides!r}")
    metadata = dict(metadata or {})
    conjugate, negate = bool(metadata.pop("conj", False)), bool(metadata.pop("neg", False))
    if any(metadata.values()):
        raise _Fault(f"a tensor carries unsupported metadata {sorted(metadata)}")
    return _TensorRef(
        storage, storage.dtype if dtype is None else dtype.dtype, offset, shape, strides, conjugate, negate
    )


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rebuild_tensor(storage, offset, shape, strides):
    return _tensor_ref(storage, offset, shape, strides)


def _rebuild_tensor_v2(storage, offset, shape, strides, requires_grad, backward_hooks, metadata=None):
    return _tensor_ref(storage, offset, shape, strides, metadata=metadata)


def _rebuild_tensor_v3(storage, offset, shape, strides, requires_grad, backward_hooks, dtype, metadata=None):
    if not isinstance(dtype, _TorchDtype):
        raise _Fault(f"_rebuild_tensor_v3 got {dtype!r} where a torch dtype belongs")
    return _tensor_ref(storage, offset, shape, strides, dtype, metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    # A Parameter is its tensor plus autograd flags and Python attributes, none of which NumPy keeps.
    if not isinstance(data, _TensorRef):
        raise _Fault("a Parameter wraps something that is not a tensor")
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _RebuildFunction(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _RebuildFunction(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor_v3"): _RebuildFunction(_rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): _RebuildFunction(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _RebuildFunction(_rebuild_parameter),
    ("torch.storage", "UntypedStorage"): _StorageType(_NUMPY_DTYPES["uint8"]),
    **{("torch", storage): _StorageType(_NUMPY_DTYPES[name]) for storage, name in _STORAGE_DTYPES.items()},
    **{("torch", name): _TorchDtype(dtype) for name, dtype in _NUMPY_DTYPES.items()},
}


_LEAF_KINDS = {
    _TensorRef: "a tensor",
    _StorageRef: "a bare storage",
    _StorageType: "a storage type",
    _TorchDtype: "a dtype",
}
_NATIVE_BYTEORDER = "little" if np.little_endian else "big"
_PICKLE_PROTOCOL_OPCODE = b"\x80"
_READ_CHUNK_BYTES = 1 << 26


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves globals only from `_ALLOWED_GLOBALS`; storages become references into the zip."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles name Python 3 globals by their Python 2 spelling (builtins.eval as __builtin__.eval).
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _Fault(
                f"its data.pkl asks for the global '{module}.{name}', which is neither a tensor rebuild function, a "
                "storage type, a dtype nor OrderedDict; loading this file with torch.load(weights_only=False) or "
                "pickle would call it, so it was refused without being executed. If the file comes from a source "
                "you trust, re-save only its state dict: torch.save(model.state_dict(), path)"
            ) from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and _is_index(pid[4])
        ):
            raise _Fault(f"its data.pkl refers to an unsupported persistent object {pid!r}")
        _, storage_type, key, _location, numel = pid
        return _StorageRef(key, storage_type.dtype, numel * storage_type.dtype.itemsize)


def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a `torch.save` zip checkpoint into an insertion-ordered dict of parameter name -> NumPy array.

    Arrays have the tensors' dtype (bfloat16 and float8 via `ml_dtypes`) and shape, are C-contiguous and own their
    memory (views, offsets and shared storages are copied apart). A checkpoint wrapped as `{'state_dict': sd, ...}`
    or `{'model': sd, ...}` is unwrapped to `sd` ('state_dict' wins when both exist); the other entries of the
    wrapper are dropped. Raises `UnsafeCheckpointError` for anything that is not a plain state dict of tensors.
    """
    try:
        return _read(os.fspath(path))
    except _Fault as fault:
        raise UnsafeCheckpointError(f"{os.fspath(path)}: {fault}") from None


def _read(path: str) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise _Fault(_why_not_a_zip(path)) from None
    except OSError as error:
        raise _Fault(f"cannot open the file ({error.strerror or error})") from None
    with archive:
        prefix = _record_prefix(archive)
        byteorder = _read_record(archive, f"{prefix}/byteorder", default=b"little")
        if byteorder not in (b"little", b"big"):
            raise _Fault(f"unknown byte order {byteorder[:40]!r} in {prefix}/byteorder (expected b'little' or b'big')")
        tree = _unpickle(_read_record(archive, f"{prefix}/data.pkl"))
        tensors = _state_dict_tensors(tree)
        return _materialize(archive, prefix, tensors, swap_bytes=(byteorder.decode() != _NATIVE_BYTEORDER))


def _why_not_a_zip(path: str) -> str:
    with open(path, "rb") as file:
        head = file.read(4)
    if head.startswith(b"PK"):
        return "truncated or corrupt zip archive (its central directory cannot be read); copy or download it again"
    if head.startswith(_PICKLE_PROTOCOL_OPCODE):
        return (
            "a bare pickle, i.e. the legacy (pre-1.6) torch.save format, which is not supported because it "
            "cannot be read without unpickling its storages by hand; re-save it once with a current torch: "
            "torch.save(torch.load(old_path, weights_only=True), new_path)"
        )
    return "not a PyTorch checkpoint: torch.save (torch >= 1.6) writes a zip archive and this file is not one"


def _record_prefix(archive: zipfile.ZipFile) -> str:
    prefixes = [
        name[: -len("/data.pkl")] for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1
    ]
    if len(prefixes) != 1:
        found = "no <name>/data.pkl" if not prefixes else f"several data.pkl records ({', '.join(prefixes)})"
        raise _Fault(f"a zip but not a torch.save checkpoint: it holds {found}")
    return prefixes[0]


def _read_record(archive: zipfile.ZipFile, name: str, default: bytes | None = None) -> bytes:
    try:
        with archive.open(name) as record:
            return record.read()
    except KeyError:
        if default is None:
            raise _Fault(f"record {name} is missing from the zip") from None
        return default
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise _Fault(f"record {name} is corrupt ({error})") from None


def _unpickle(data: bytes) -> Any:
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except _Fault:
        raise
    except Exception as error:  # noqa: BLE001 - only our allow-listed stand-ins ran, so any error is a bad pickle
        raise _Fault(f"its data.pkl is not a valid state-dict pickle ({type(error).__name__}: {error})") from None


def _state_dict_tensors(tree: Any) -> dict[str, _TensorRef]:
    if isinstance(tree, dict):
        for wrapper_key in ("state_dict", "model"):
            if isinstance(tree.get(wrapper_key), dict):
                tree = tree[wrapper_key]
                break
    if not isinstance(tree, dict):
        raise _Fault(f"it holds a {type(tree).__name__}, not a state dict (a dict of name -> tensor)")
    for name, leaf in tree.items():
        if not isinstance(name, str) or not isinstance(leaf, _TensorRef):
            what = _LEAF_KINDS.get(type(leaf), f"a {type(leaf).__name__}")
            raise _Fault(f"entry {name!r} of its state dict is {what}; expected a string name mapped to a tensor")
    return tree


def _materialize(
    archive: zipfile.ZipFile, prefix: str, tensors: dict[str, _TensorRef], swap_bytes: bool
) -> dict[str, np.ndarray]:
    # Each storage is read once and dropped after its last tensor, so peak memory stays near one checkpoint's size.
    uses_left = collections.Counter(ref.storage.key for ref in tensors.values())
    storages: dict[str, np.ndarray] = {}
    arrays = {}
    for name, ref in tensors.items():
        key = ref.storage.key
        if key not in storages:
            storages[key] = _read_storage(archive, f"{prefix}/data/{key}", ref.storage.nbytes)
        uses_left[key] -= 1
        storage = storages.pop(key) if uses_left[key] == 0 else storages[key]
        array = _tensor_array(name, ref, storage, reuse_storage=(uses_left[key] == 0))
        if swap_bytes:
            _byteswap_in_place(array)
        if ref.conjugate:
            np.conjugate(array, out=array)
        if ref.negate:
            np.negative(array, out=array)
        arrays[name] = array
    return arrays


def _read_storage(archive: zipfile.ZipFile, name: str, nbytes: int) -> np.ndarray:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise _Fault(f"storage record {name} is missing from the zip") from None
    if info.file_size < nbytes:
        raise _Fault(f"storage record {name} holds {info.file_size} bytes but the pickle declares {nbytes}")
    buffer = np.empty(nbytes, np.uint8)
    view = memoryview(buffer)
    try:
        with archive.open(info) as record:
            filled = 0
            while filled < nbytes:
                count = record.readinto(view[filled : filled + _READ_CHUNK_BYTES])
                if not count:
                    raise _Fault(f"storage record {name} ends after {filled} of its {nbytes} bytes")
                filled += count
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise _Fault(f"storage record {name} is corrupt ({error})") from None
    return buffer


def _tensor_array(name: str, ref: _TensorRef, storage: np.ndarray, reuse_storage: bool) -> np.ndarray:
    itemsize = ref.dtype.itemsize
    elements = storage.size // itemsize
    reach = 0 if 0 in ref.shape else 1 + sum((n - 1) * s for n, s in zip(ref.shape, ref.strides))
    if ref.offset + reach > elements:
        raise _Fault(
            f"tensor {name!r} (size {ref.shape}, stride {ref.strides}, offset {ref.offset}) needs "
            f"{ref.offset + reach} elements of {ref.dtype} but its storage data/{ref.storage.key} holds {elements}"
        )
    count = math.prod(ref.shape)
    if (
        reuse_storage
        and ref.offset == 0
        and count * itemsize == storage.size
        and ref.strides == _contiguous_strides(ref.shape)
    ):
        return storage.view(ref.dtype).reshape(ref.shape)
    typed = storage[: elements * itemsize].view(ref.dtype)[ref.offset :]
    view = np.lib.stride_tricks.as_strided(typed, ref.shape, [s * itemsize for s in ref.strides], writeable=False)
    return view.copy()


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _byteswap_in_place(array: np.ndarray) -> None:
    # Complex numbers swap per component; ml_dtypes types have no byteswap of their own, so swap as unsigned ints.
    unit = array.dtype.itemsize // (2 if array.dtype.kind == "c" else 1)
    if unit > 1:
        array.view(f"u{unit}").byteswap(inplace=True)
