"""Shared test set-up and fixtures.

segment_anything imports torchvision, which does not load beside the CPU torch wheel: the stand-in of
`torchvision_stand_in` (beside this file) is installed first.
"""

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torchvision_stand_in
from apps import FAST_COMPILE
from filelock import FileLock

torchvision_stand_in.install()

# pytest-xdist's workers share the cores: a PyTorch reference running on more threads than its worker's share only
# spins against the other workers (on 2 cores and 2 workers, one thread each: the torch-heavy parity modules took 9%
# less CPU and wall time).
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
torch.set_num_threads(max(1, _CORES // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

# One XLA compilation cache for the session, inherited by the training and evaluation commands the tests start and
# by pytest-xdist's workers: each command compiles the same tiny models, which then load in a fraction of the compile
# time. Every program is kept, however quick to compile: a command's model initialisation is hundreds of small
# programs (7 of a tiny training run's 26 s). Set before any test module imports jax. Only the session that made it
# removes it: a pytest started by a test (the GPU check's) inherits it, and removing it there left the rest of the
# suite compiling everything anew.
_OWNS_XLA_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
_XLA_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="sam_jax_test_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Without an accelerator plugin JAX runs on the CPU, where compiling the tests' thousands of tiny programs is most of
# the suite's time: XLA's CPU compiler is set to compile fast rather than to run fast (apps.FAST_COMPILE); results
# stay within the tests' tolerances. A GPU keeps XLA's defaults (its tests measure the compiled code), and so do the
# tests that run a real-size encoder (apps.optimised_env, optimised.optimised_jit). A flag already set (by the user,
# or by the session that started this one) stays.
_CPU_ONLY = not importlib.metadata.entry_points(group="jax_plugins") and importlib.util.find_spec("jax_plugins") is None
if _CPU_ONLY:
    _SET = os.environ.get("XLA_FLAGS", "")
    _FLAGS = [_SET, *(f"--{name}={value}" for name, value in FAST_COMPILE.items() if f"--{name}=" not in _SET)]
    os.environ["XLA_FLAGS"] = " ".join(filter(None, _FLAGS))


# Modules whose tests share an expensive module fixture: all on one pytest-xdist worker, which builds it once.
ONE_WORKER_MODULES = {"tests/test_multi_process.py", "tests/test_eval_model.py"}


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist hands out each test on its own, the modules of ONE_WORKER_MODULES whole, and the modules first
    by test count (its `loadgroup` does not group under pytest 9.2: it renames tests through an attribute pytest no
    longer reads)."""
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            module = nodeid.split("::")[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return Scheduling(config, log)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the long tests first, the short ones then even out the workers' ends
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
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


@pytest.fixture(scope="session", autouse=True)
def fork_server():
    """The worker's fork server, from which the commands the tests start are forked (apps.py, fork_server.py)."""
    from apps import FORK_SERVER, app_env

    folder = tempfile.mkdtemp(prefix="sam_jax_fork_")  # short: a socket's path has at most 107 bytes
    os.environ["SAM_JAX_TEST_FORK_SERVER"] = folder
    with open(os.path.join(folder, "server.log"), "w") as log:
        server = subprocess.Popen(
            [sys.executable, str(FORK_SERVER), "serve", folder], env=app_env(), stdout=log, stderr=subprocess.STDOUT
        )
    yield
    server.terminate()
    server.wait()
    shutil.rmtree(folder, ignore_errors=True)


def _made_once(tmp_path_factory, name: str, make) -> Path:
    """The folder `name` filled by `make(folder)` once for the whole test session: pytest-xdist's workers share it
    (the first makes it while the others wait), so the session's data and trained run are built once, not per worker."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    folder, done = root / name, root / f"{name}.done"
    with FileLock(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed half-way
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """One phantom case per domain, written once per test session."""
    from sam_jax.data.phantom import write_phantom

    return _made_once(tmp_path_factory, "phantom", lambda out: write_phantom(out, cases_per_domain=1, seed=0))


@pytest.fixture(scope="session")
def phantom_two_per_domain(tmp_path_factory):
    """Two phantom cases per domain, written once per test session: the runs stopped while caching them only read
    them."""
    from sam_jax.data.phantom import write_phantom

    return _made_once(tmp_path_factory, "phantom_two", lambda out: write_phantom(out, cases_per_domain=2, seed=3))


@pytest.fixture(scope="session")
def phantom_cache_dir(phantom_dir, tmp_path_factory):
    """The phantom's preprocessing cache at the default settings, built once for the session (training runs reuse
    it: their settings match, so nothing is rebuilt)."""
    from sam_jax.data.cache import build_cache

    return _made_once(tmp_path_factory, "phantom_cache", lambda out: build_cache(phantom_dir, out))


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

    def train(workdir):
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

    return _made_once(tmp_path_factory, "tiny_run", train)


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
