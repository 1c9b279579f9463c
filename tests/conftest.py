"""Shared test set-up and fixtures.

segment_anything imports torchvision, which does not load beside the CPU torch wheel: the stand-in of
`torchvision_stand_in` (beside this file) is installed first.
"""

import os
import shutil
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torchvision_stand_in

torchvision_stand_in.install()

# One XLA compilation cache for the session, inherited by the training and evaluation commands the tests start:
# each command compiles the same tiny models, which then load in a fraction of the compile time. Set before any
# test module imports jax. Only the session that made it removes it: a pytest started by a test (the GPU check's)
# inherits it, and removing it there left the rest of the suite compiling everything anew.
_OWNS_XLA_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
_XLA_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="sam_jax_test_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_collection_modifyitems(config, items):
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_tests:
        import jax

        if jax.default_backend() != "gpu":
            skip = pytest.mark.skip(reason=f"needs a GPU; JAX's backend here is {jax.default_backend()}")
            for item in gpu_tests:
                item.add_marker(skip)


def pytest_sessionfinish(session):
    if _OWNS_XLA_CACHE:
        shutil.rmtree(_XLA_CACHE, ignore_errors=True)


def _write_tiny_case(
    folder: Path,
    case_id: str = "BraTS-GLI-00001-000",
    *,
    shape=(12, 10, 6),
    seg=None,
    images=None,
    modalities=("t1n", "t1c", "t2w", "t2f", "seg"),
    affine=None,
) -> Path:
    """Write a small BraTS-2023-named case in LPS (as BraTS ships it): brain = a box inside the volume with
    per-modality intensities 10 * (m + 1) + voxel noise; `seg` defaults to a 2x2x2 label-2 block with a label-3
    voxel."""
    folder = Path(folder) / case_id
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) if affine is None else affine  # LPS, as BraTS ships
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    brain = np.zeros(shape, bool)
    brain[2:-2, 1:-1, 1:-1] = True
    if images is None:
        images = {
            m: np.where(brain, 10.0 * (i + 1) + rng.integers(0, 5, shape), 0).astype(np.float32)
            for i, m in enumerate(("t1n", "t1c", "t2w", "t2f"))
        }
    if seg is None:
        seg = np.zeros(shape, np.uint8)
        seg[4:6, 3:5, 2:4] = 2
        seg[4, 3, 2] = 3
    for name in modalities:
        data = seg if name == "seg" else images[name]
        nib.save(nib.Nifti1Image(np.asarray(data), affine), folder / f"{case_id}-{name}.nii.gz")
    return folder


@pytest.fixture
def write_tiny_case():
    """A function writing a tiny BraTS-named case (see `_write_tiny_case`)."""
    return _write_tiny_case


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """One phantom case per domain, written once per test session."""
    from sam_jax.data.phantom import write_phantom

    out = tmp_path_factory.mktemp("phantom")
    write_phantom(out, cases_per_domain=1, seed=0)
    return out


@pytest.fixture(scope="session")
def phantom_cache_dir(phantom_dir, tmp_path_factory):
    """The phantom's preprocessing cache at the default settings, built once for the session (training runs reuse
    it: their settings match, so nothing is rebuilt)."""
    from sam_jax.data.cache import build_cache

    out = tmp_path_factory.mktemp("phantom_cache")
    build_cache(phantom_dir, out)
    return out


@pytest.fixture(scope="session")
def tiny_config(phantom_dir, phantom_cache_dir):
    """The tiny training run on the phantom that every training test starts from, changing what it tests: the
    4-channel LoRA model at 128², two slices a step, four steps, every domain trained and scored."""
    from sam_jax.training.config import TrainConfig

    return TrainConfig(
        data_dir=str(phantom_dir),
        cache_dir=str(phantom_cache_dir),
        domain="ALL",
        eval_domains=("GLI", "MEN", "PED", "SSA"),
        model_type="tiny",
        image_size=128,
        modalities="all4",
        trainable="lora",
        lora_rank=2,
        batch_size=2,
        steps=4,
        learning_rate=1e-3,
        loss="bce_dice",
        slice_policy="tumour",
        checkpoint_every=2,
        val_slices=8,
        log_every=1,
        seed=3,
    )


@pytest.fixture(scope="session")
def tiny_trained_run(tiny_config, tmp_path_factory):
    """A tiny LoRA model trained for two steps on the phantom: its workdir (config.json + adapter.safetensors)."""
    from sam_jax.training.loop import train_and_evaluate

    workdir = tmp_path_factory.mktemp("tiny_run")
    train_and_evaluate(
        tiny_config.replace(
            eval_domains=(),
            steps=2,
            learning_rate=1e-2,
            loss="bce",
            val_slices=2,
            log_every=10,
            seed=5,
            workdir=str(workdir),
        )
    )
    return workdir


@pytest.fixture(scope="session")
def tiny_sam_pair():
    """A randomly initialised PyTorch SAM of the tiny config and its Flax twin (the same weights)."""
    from torch_reference import flax_twin, torch_sam

    from sam_jax.config import sam_config

    config = sam_config("tiny")
    reference = torch_sam(config)
    return reference, flax_twin(config, reference)


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tiny_sam_pair, tmp_path_factory):
    """The PyTorch half of `tiny_sam_pair` saved as a SAM checkpoint (`.pth`), standing in for sam_vit_b_01ec64.pth."""
    import torch

    path = tmp_path_factory.mktemp("sam_checkpoint") / "sam_tiny.pth"
    torch.save(tiny_sam_pair[0].state_dict(), path)
    return path
