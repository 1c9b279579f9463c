"""Read and write our parameter files (safetensors, dot-joined Flax paths) and fill a model from them.

Files are written atomically: a temporary file beside the target, then a rename, so a crash never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from sam_jax.outputs import check_output_file, disk_full, free_bytes
from sam_jax.weights.params import WeightsError, describe_encoder, summarise_problems
from sam_jax.weights.resize import fit_to_image_size

FORMAT_VERSION = "1"


def save_arrays(path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """Write atomically; a full disk is an `OutputError` naming `path` and the bytes needed, the old file intact."""
    path = check_output_file(path, "parameter file")
    needed = sum(np.asarray(v).nbytes for v in arrays.values())
    if free_bytes(path.parent) < needed:
        raise disk_full(path, needed)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(
            # ascontiguousarray makes a 0-d array 1-d (a batch norm's counter): the shape is put back
            {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in arrays.items()},
            tmp,
            metadata={"format_version": FORMAT_VERSION, **{k: str(v) for k, v in metadata.items()}},
        )
        _sort_metadata(tmp)
        os.replace(tmp, path)
    except SafetensorError as e:  # the writer reports I/O faults as its own error type, the OS error in the text
        if "os error 28" in str(e) or "os error 122" in str(e):
            raise disk_full(path, needed) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _sort_metadata(path) -> None:
    """Rewrite the header's metadata in key order, in place: the writer emits it in hash order, different on every
    run, so identical contents would give files (and sha256s, a child adapter's `parent_sha256`) that differ."""
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        ordered = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(ordered) <= length:  # the header's length stays: the padding spaces the format allows make it up
            f.seek(8)
            f.write(ordered.ljust(length))


def _read(path, arrays: bool):
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        with safe_open(str(path), "np") as f:
            metadata = dict(f.metadata() or {})
        return (load_file(str(path)) if arrays else None), metadata
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(
            f"{path}: not a readable safetensors file ({e}). Convert a PyTorch checkpoint with "
            f"`python convert/sam_weights.py`."
        ) from None


def read_arrays(path) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Every tensor and the header; a tensor holding NaN or Inf is refused (a diverged run's adapter would
    otherwise load and predict empty masks without a word)."""
    arrays, metadata = _read(path, arrays=True)
    for name, array in arrays.items():
        if array.dtype.kind not in "biu" and not (finite := np.isfinite(array)).all():
            raise WeightsError(
                f"{path}: tensor {name!r} holds {finite.size - np.count_nonzero(finite):,} NaN or Inf values of "
                f"{finite.size:,} (a diverged training run or a damaged file); not loaded"
            )
    return arrays, metadata


def read_metadata(path) -> Dict[str, str]:
    """The header alone (model type, source sha256, …), without reading the tensors."""
    return _read(path, arrays=False)[1]


def model_arrays(model: nnx.Module) -> Dict[str, jnp.ndarray]:
    """Every variable of the model as dot-joined path → array."""
    return {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model))}


def assign(model: nnx.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays into the model's variables by dot-joined path (paths must exist, shapes must match)."""
    current = {".".join(map(str, p)): (p, v) for p, v in nnx.to_flat_state(nnx.state(model))}
    problems = [
        f"{path!r} is not in the model"
        if path not in current
        else f"{path!r} has shape {tuple(np.shape(value))}, the model needs {tuple(current[path][1].shape)}"
        for path, value in arrays.items()
        if path not in current or tuple(np.shape(value)) != tuple(current[path][1].shape)
    ]
    if problems:  # checked before anything is written: the model is never left half-assigned
        raise WeightsError(f"cannot assign: {summarise_problems(problems)}")
    # device_put, not jnp.asarray: JAX compiles an identity program per shape to copy a NumPy array through
    # jnp.asarray (lax.stage), 30 programs and ~0.7 s for a tiny model's load.
    placed = [(current[path][0], jax.device_put(value)) for path, value in arrays.items()]
    nnx.update(model, nnx.from_flat_state(placed))


def _check_encoder(path, metadata: Mapping[str, str], wanted: Mapping[str, str]) -> None:
    """Refuse a file whose header records another image encoder than the model's (what a header lacks is left to
    the shape checks)."""
    recorded = dict(metadata)
    if "encoder_embed_dim" in recorded:  # SAM's ViT, converted before TinyViT came: its header names no encoder
        recorded.setdefault("image_encoder", "vit")
    if any(recorded[k] != v for k, v in wanted.items() if k in recorded):
        raise WeightsError(
            f"{path} holds {metadata.get('model_type')} weights ({describe_encoder(recorded)}), but the model is "
            f"configured with {describe_encoder(wanted)}"
        )


def load_sam_weights(model: nnx.Module, path) -> Dict[str, str]:
    """Fill `model` from a converted SAM file; returns the file's metadata.

    Every variable of the model must come from the file; a weight of the wrong shape or a weight the model lacks is
    an error. Position tables are resized when the model's input size differs from the file's.
    """
    arrays, metadata = read_arrays(path)
    config = getattr(model, "config", None)
    if config is not None:
        _check_encoder(path, metadata, config.encoder_identity())
    shapes = {k: tuple(v.shape) for k, v in model_arrays(model).items()}
    arrays = fit_to_image_size(arrays, shapes)
    problems = [f"missing {k!r}" for k in sorted(shapes) if k not in arrays]
    for k, v in sorted(arrays.items()):
        if k not in shapes:
            problems.append(f"unexpected {k!r}")
        elif tuple(v.shape) != shapes[k]:
            problems.append(f"{k!r} has shape {tuple(v.shape)}, the model needs {shapes[k]}")
    if problems:
        raise WeightsError(
            f"{path}: weights do not fit the model ({metadata.get('model_type', 'unknown type')}): "
            f"{summarise_problems(problems)}"
        )
    assign(model, arrays)
    return metadata
