"""Adapter files: every parameter that differs from the base SAM weights (safetensors, dot-joined paths).

That is the trainable parameters, plus the frozen ones a run inherited from a parent adapter (`--init_adapter`:
step 2 of the two-step ablation keeps step 1's patch embedding frozen), listed in the header as `inherited` with the
parent file's sha256. The header also holds the adaptation config and the sha256 of the base weights, so an adapter
is never applied to another base or to a model adapted differently, and one file rebuilds the trained model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from flax import nnx
from safetensors import safe_open

from sam_jax.adaptation.config import AdaptationConfig
from sam_jax.adaptation.errors import AdaptationError
from sam_jax.adaptation.trainable_rules import parameter_paths, trainable_paths
from sam_jax.hashing import file_sha256
from sam_jax.weights.io import assign, read_arrays, save_arrays
from sam_jax.weights.params import summarise_problems

KIND = "sam_jax_adapter"


class AdapterFileError(AdaptationError):
    """An adapter file that does not belong to the base weights or to the adapted model."""


def base_weights_sha256(path) -> str:
    """The identity of a converted SAM file: its `source_sha256` metadata if present, else the file's own sha256."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"{path}: no such file")
    try:
        with safe_open(str(path), "np") as f:
            source = (f.metadata() or {}).get("source_sha256")
    except Exception as e:  # safetensors raises several types for a file that is not its format
        raise AdapterFileError(f"{path}: not a readable safetensors file ({e})") from None
    return source or file_sha256(path)


def save_adapter(
    path,
    trainable_state: nnx.State,
    adaptation_config: AdaptationConfig,
    base_sha256: str,
    inherited: Mapping[str, np.ndarray] | None = None,
    parent_sha256: str = "",
) -> None:
    """`inherited`: frozen parameters that came from the parent adapter (`init_from_adapter`), path → array."""
    arrays = {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(trainable_state)}
    inherited = {p: np.asarray(a) for p, a in (inherited or {}).items()}
    if overlap := sorted(set(arrays) & set(inherited)):
        raise AdapterFileError(f"{path}: parameters both trained and inherited: {overlap[:5]}")
    metadata = {"kind": KIND, "base_sha256": base_sha256, **adaptation_config.to_metadata()}
    if inherited:
        metadata.update(inherited=",".join(sorted(inherited)), parent_sha256=parent_sha256)
    save_arrays(path, {**arrays, **inherited}, metadata)


def load_adapter(model: nnx.Module, path, adaptation_config: AdaptationConfig, base_sha256: str) -> dict:
    """Write an adapter into `model` (already built and adapted with `adaptation_config`); returns its metadata."""
    arrays, metadata = read_arrays(path)
    if metadata.get("kind") != KIND:
        raise AdapterFileError(f"{path}: not an adapter file (kind {metadata.get('kind')!r})")
    if metadata.get("base_sha256") != base_sha256:
        raise AdapterFileError(f"{path}: made on base weights {metadata.get('base_sha256')}, not on {base_sha256}")
    try:
        stored = AdaptationConfig.from_metadata(metadata)
    except AdaptationError as e:
        raise AdapterFileError(f"{path}: {e}") from None
    adaptation_config = adaptation_config.adaptation()  # a run spec's other fields are not the adapter's to check
    if stored != adaptation_config:
        differ = {
            k: (v, adaptation_config.to_metadata()[k])
            for k, v in stored.to_metadata().items()
            if v != adaptation_config.to_metadata()[k]
        }
        raise AdapterFileError(f"{path}: made with another adaptation; file vs requested: {differ}")
    shapes = parameter_paths(model)
    expected = {p for p, trains in trainable_paths(model, adaptation_config.trainable).items() if trains}
    expected |= {p for p in metadata.get("inherited", "").split(",") if p}
    problems = [f"missing {p!r}" for p in sorted(expected - set(arrays))]
    problems += [f"unexpected {p!r}" for p in sorted(set(arrays) - expected)]
    problems += [
        f"{p!r} has shape {tuple(a.shape)}, the model needs {shapes[p]}"
        for p, a in sorted(arrays.items())
        if p in expected and tuple(a.shape) != shapes[p]
    ]
    if problems:
        raise AdapterFileError(f"{path}: does not fit the adapted model: {summarise_problems(problems)}")
    assign(model, arrays)
    return metadata


def init_from_adapter(model: nnx.Module, path, base_sha256: str) -> dict:
    """Start from another run's adapter whatever its trainable preset (step 2 of the two-step ablation takes the
    patch embedding of step 1): every array in the file must exist in `model` with the same shape. Returns the
    arrays written, path → array."""
    arrays, metadata = read_arrays(path)
    if metadata.get("kind") != KIND:
        raise AdapterFileError(f"{path}: not an adapter file (kind {metadata.get('kind')!r})")
    if metadata.get("base_sha256") != base_sha256:
        raise AdapterFileError(f"{path}: made on base weights {metadata.get('base_sha256')}, not on {base_sha256}")
    shapes = parameter_paths(model)
    problems = [
        f"{p!r} is not in the model"
        if p not in shapes
        else f"{p!r} has shape {tuple(a.shape)}, the model needs {shapes[p]}"
        for p, a in sorted(arrays.items())
        if shapes.get(p) != tuple(a.shape)
    ]
    if problems:
        raise AdapterFileError(f"{path}: cannot initialise this model from it: {summarise_problems(problems)}")
    assign(model, arrays)
    return arrays
