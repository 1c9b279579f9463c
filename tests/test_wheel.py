"""`pip install .` works: the wheel built from this checkout, installed into a fresh virtual environment outside it,
runs the README's demo command from an empty folder, finding its flagfile by name in the installed package data.

The fresh environment gets the wheel alone (`--no-deps`); its dependencies come from this environment's
site-packages, added by a `.pth` path line. Such a line only appends the folder to sys.path: the `.pth` files inside
that folder do not run, so an editable install of the checkout there stays inactive, and the checked-out code cannot
be imported (checked below)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["--model_type=tiny", "--image_size=64", "--steps=3", "--warmup_steps=0", "--phantom_cases_per_domain=1"]
WHERE = """
import json, sys
import sam_jax
from sam_jax.evaluation.reproduce import paper_code_options
from sam_jax.flags_util import app_package_dir, find_flagfile
print(json.dumps({"sam_jax": sam_jax.__file__, "sys_path": sys.path,
                  "editable_finders": [name for name in sys.modules if name.startswith("__editable__")],
                  "train": str(app_package_dir("train")), "eval": str(app_package_dir("eval")),
                  "demo_flags": str(find_flagfile("train/demo.flags", app_package_dir("train"))),
                  "paper_code_options": paper_code_options()}))
"""


def _build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the checkout's packaged files: an in-tree build would leave build/ behind, whose stale
    modules a later build would ship."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    src = tmp / "src"
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        for package in ROOT.glob(pattern.rstrip("*")):
            shutil.copytree(package, src / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    _check(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            tmp / "dist",
            src,
        ],
        cwd=tmp,
    )
    (wheel,) = (tmp / "dist").glob("sam_jax-*.whl")
    return wheel


def _check(args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo_from_an_empty_folder(phantom_dir, phantom_cache_dir, tmp_path):
    wheel = _build_wheel(tmp_path)
    # The package data: every flagfile of the apps and the viewer's page.
    data = {n for n in zipfile.ZipFile(wheel).namelist() if not n.endswith(".py") and ".dist-info/" not in n}
    files = [*ROOT.glob("train/**/*.flags"), *ROOT.glob("eval/*.flags"), *(ROOT / "sam_jax/viewer/page").iterdir()]
    assert data == {str(p.relative_to(ROOT)) for p in files}

    venv = tmp_path / "venv"
    assert not venv.is_relative_to(ROOT)
    _check([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = Path(_check([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    site = site.resolve()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "test_environment.pth").write_text("".join(f"{path}\n" for path in ours))
    _check([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel])

    empty = (tmp_path / "user").resolve()
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args):
        return subprocess.run([str(a) for a in args], cwd=empty, env=env, capture_output=True, text=True, timeout=900)

    where = json.loads(_check([python, "-c", WHERE], cwd=empty, env=env).stdout)
    assert Path(where["sam_jax"]).is_relative_to(site), where["sam_jax"]
    assert not [p for p in where["sys_path"] if p and Path(p).resolve().is_relative_to(ROOT)]
    assert where["editable_finders"] == []
    assert (where["train"], where["eval"]) == (str(site / "train"), str(site / "eval"))
    assert where["demo_flags"] == str(site / "train" / "demo.flags")
    assert Path(where["demo_flags"]).read_text() == (ROOT / "train" / "demo.flags").read_text()
    # The library reads the paper code's flagfile from the wheel too (every option of it but its include and workdir).
    options = [
        line
        for line in (ROOT / "train" / "paper_code" / "adult.flags").read_text().splitlines()
        if line.startswith("--") and not line.startswith(("--flagfile", "--workdir"))
    ]
    assert where["paper_code_options"] == options and "--volume_batch=4" in options

    # The README's demo, shrunk: the flagfile's own settings (full training of an all-four-modality model with
    # BCE + Dice) reach the run, which writes its adapter and summary. Its data is ready (the session's phantom and
    # cache are what it would write and build: seed 0, one case per domain, default preprocessing; test_commands.py
    # runs the demo that writes them).
    shutil.copytree(phantom_dir, tmp_path / "phantom")
    shutil.copytree(phantom_cache_dir, tmp_path / "phantom" / ".sam_jax_cache")
    demo = run(
        python,
        "-m",
        "train.main",
        "--flagfile=train/demo.flags",
        *DEMO,
        f"--data_dir={tmp_path / 'phantom'}",
        f"--workdir={tmp_path / 'w'}",
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "0 (re)built" in demo.stderr and "phantom cases per domain to" not in demo.stderr, demo.stderr[-3000:]
    assert (tmp_path / "w" / "adapter.safetensors").is_file() and (tmp_path / "w" / "summary.json").is_file()
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    assert (config["trainable"], config["lora_rank"], config["loss"], config["model_type"], config["steps"]) == (
        "full",
        0,
        "bce_dice",
        "tiny",
        3,
    )
    assert config["modalities"] == ["t1n", "t1c", "t2w", "t2f"]

    # absl's --help exits with 1; the app's docstring and flags tell that the app itself answered. A console script
    # answers exactly as its app run by hand does.
    usage = run(python, "-m", "eval.main", "--help")
    assert usage.returncode == 1 and "Traceback" not in usage.stderr, usage.stderr[-3000:]
    assert "Score a model on one domain with every protocol" in usage.stdout and "--checkpoint WORKDIR" in usage.stdout
    assert "\n  --output_dir: " in usage.stdout
    assert run(venv / "bin" / "sam-jax-eval", "--help").stdout == usage.stdout
    convert = run(python, site / "convert" / "sam_weights.py", "--help")
    assert "--checkpoint: " in convert.stdout
    assert run(venv / "bin" / "sam-jax-convert", "--help").stdout == convert.stdout
    # The console scripts are the same apps: flagfiles looked up in the installed package, the error naming it.
    missing = run(venv / "bin" / "sam-jax-train", "--flagfile=nope.flags")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"error: --flagfile=nope.flags: not found; looked in {empty}/nope.flags, {site}/train/nope.flags" in (
        missing.stderr
    )
