"""Adapter files: the trainable tree round-trips, and an adapter for another base or another adaptation is refused."""

import hashlib

import jax
import numpy as np
import pytest
from flax import nnx

from sam_jax.adaptation import AdaptationConfig, base_weights_sha256, build_model, load_adapter, partition, save_adapter
from sam_jax.adaptation.adapter_io import AdapterFileError, init_from_adapter
from sam_jax.config import sam_config
from sam_jax.weights.io import load_sam_weights, model_arrays, read_arrays, save_arrays
from sam_jax.weights.params import WeightsError

CONFIG = sam_config("tiny")
ADAPTATION = AdaptationConfig(cross_slice=True)
BASE = "ab" * 32


def _flat(state):
    return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = build_model(CONFIG, ADAPTATION, rngs=nnx.Rngs(0))
    _, trainable, _ = partition(model, ADAPTATION.trainable)
    trainable = jax.tree.map(lambda x: x + 1.0, trainable)  # unlike any fresh initialisation
    path = tmp_path_factory.mktemp("adapter") / "adapter.safetensors"
    save_adapter(path, trainable, ADAPTATION, BASE)
    return path, _flat(trainable)


@pytest.mark.slow
def test_round_trip_fills_the_trainable_leaves_only(saved):
    path, trainable = saved
    model = build_model(CONFIG, ADAPTATION, rngs=nnx.Rngs(1))
    _, _, frozen_before = partition(model, ADAPTATION.trainable)
    metadata = load_adapter(model, path, ADAPTATION, BASE)
    assert metadata["base_sha256"] == BASE and AdaptationConfig.from_metadata(metadata) == ADAPTATION
    _, trainable_after, frozen_after = partition(model, ADAPTATION.trainable)
    for name, value in _flat(trainable_after).items():
        np.testing.assert_array_equal(value, trainable[name], err_msg=name)
    for name, value in _flat(frozen_before).items():
        np.testing.assert_array_equal(_flat(frozen_after)[name], value, err_msg=name)


def test_adapter_for_another_base_is_refused(saved):
    path, _ = saved
    with pytest.raises(AdapterFileError, match="made on base weights ab.*, not on cd"):
        load_adapter(build_model(CONFIG, ADAPTATION, rngs=nnx.Rngs(1)), path, ADAPTATION, "cd" * 32)


def test_adapter_for_another_adaptation_is_refused(saved):
    path, _ = saved
    other = ADAPTATION.replace(lora_rank=2)
    with pytest.raises(AdapterFileError, match="another adaptation.*lora_rank"):
        load_adapter(build_model(CONFIG, other, rngs=nnx.Rngs(1)), path, other, BASE)
    # The model must also be adapted as the adapter says: here its LoRA has rank 2, the file's rank 4.
    with pytest.raises(AdapterFileError, match=r"does not fit the adapted model: .*lora_q_a' has shape \(64, 4\)"):
        load_adapter(build_model(CONFIG, other, rngs=nnx.Rngs(1)), path, ADAPTATION, BASE)


def test_a_sam_file_is_not_an_adapter(tmp_path):
    path = tmp_path / "sam.safetensors"
    save_arrays(path, {"x": np.zeros(2, np.float32)}, {})
    with pytest.raises(AdapterFileError, match="not an adapter file"):
        load_adapter(build_model(CONFIG, ADAPTATION, rngs=nnx.Rngs(1)), path, ADAPTATION, BASE)


def test_base_identity_prefers_the_source_checksum(tmp_path):
    arrays = {"w": np.arange(800_000, dtype=np.float32)}  # 3.2 MB: the checksum reads it in several chunks
    save_arrays(tmp_path / "with.safetensors", arrays, {"source_sha256": "f00d"})
    save_arrays(tmp_path / "without.safetensors", arrays, {})
    assert base_weights_sha256(tmp_path / "with.safetensors") == "f00d"
    expected = hashlib.sha256((tmp_path / "without.safetensors").read_bytes()).hexdigest()
    assert base_weights_sha256(tmp_path / "without.safetensors") == expected
    with pytest.raises(AdapterFileError, match="no such file"):
        base_weights_sha256(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_an_adapter_with_non_finite_weights_is_refused_naming_file_and_tensor(saved, tmp_path, bad):
    """A diverged run's adapter: it would load and predict empty masks without a word."""
    path, _ = saved
    arrays, metadata = read_arrays(path)
    name = sorted(arrays)[-1]
    arrays[name] = arrays[name].copy()
    arrays[name].flat[[0, -1]] = bad
    poisoned = tmp_path / "adapter.safetensors"
    save_arrays(poisoned, arrays, metadata)
    model = build_model(CONFIG, ADAPTATION, rngs=nnx.Rngs(1))
    with pytest.raises(WeightsError, match=rf"{poisoned}: tensor '{name}' holds 2 NaN or Inf values of "):
        load_adapter(model, poisoned, ADAPTATION, BASE)
    with pytest.raises(WeightsError, match=f"tensor '{name}'"):
        init_from_adapter(model, poisoned, BASE)


def test_sam_weights_with_a_non_finite_value_are_refused(tmp_path):
    model = build_model(CONFIG, ADAPTATION, rngs=nnx.Rngs(1))
    arrays = {k: np.asarray(v) for k, v in model_arrays(model).items()}
    arrays["mask_decoder.iou_token.embedding"] = np.full_like(arrays["mask_decoder.iou_token.embedding"], np.inf)
    path = tmp_path / "sam.safetensors"
    save_arrays(path, arrays, {})
    with pytest.raises(WeightsError, match=r"sam.safetensors: tensor 'mask_decoder.iou_token.embedding' holds 32 "):
        load_sam_weights(model, path)
