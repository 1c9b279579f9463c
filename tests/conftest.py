"""Shared test set-up and fixtures.

A stand-in for torchvision so that `segment_anything` imports beside the CPU torch wheel.

segment_anything imports torchvision at package import only for its predictor's resize and the automatic mask
generator's NMS; the model code we test against never calls them. PyPI's torchvision does not load beside
torch 2.13.0 (reference.md §1), so we register empty modules that fail loudly if anything does call them.
"""

import sys
import types
import zlib
from pathlib import Path
import nibabel as nib
import numpy as np
import pytest


def _torchvision_stand_in():
    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision is stubbed out in tests; this code path needs the real package")

    names = {
        "torchvision": {},
        "torchvision.ops": {},
        "torchvision.ops.boxes": {"batched_nms": unavailable, "box_area": unavailable},
        "torchvision.transforms": {},
        "torchvision.transforms.functional": {"resize": unavailable, "to_pil_image": unavailable},
    }
    for name, attrs in names.items():
        if name in sys.modules:
            continue
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module


try:
    import torchvision  # noqa: F401  (a working install is used as is)
except Exception:
    for key in [k for k in sys.modules if k.startswith("torchvision")]:
        del sys.modules[key]
    _torchvision_stand_in()


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
    """Write a small BraTS-2023-named case: brain = a box inside the volume with per-modality intensities
    10 * (m + 1) + voxel noise; `seg` defaults to a 2x2x2 label-2 block with a label-3 voxel."""
    folder = Path(folder) / case_id
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
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
def tiny_trained_run(phantom_dir, tmp_path_factory):
    """A tiny LoRA model trained for two steps on the phantom: its workdir (config.json + adapter.safetensors)."""
    from sam_jax.training.config import TrainConfig
    from sam_jax.training.loop import train_and_evaluate

    workdir = tmp_path_factory.mktemp("tiny_run")
    cfg = TrainConfig(data_dir=str(phantom_dir), cache_dir=str(tmp_path_factory.mktemp("tiny_cache")), domain="ALL",
                      eval_domains=(), model_type="tiny", image_size=128, trainable="lora", lora_rank=2,
                      batch_size=2, steps=2, learning_rate=1e-2, slice_policy="tumour", checkpoint_every=2,
                      eval_max_slices=2, seed=5, workdir=str(workdir))
    train_and_evaluate(cfg)
    return workdir
