"""Flagfiles are found wherever the user stands: as given, beside the flagfile that names them, in the app's folder,
or in the repository above it; nested ones expand in order, so later flags still win."""

from pathlib import Path

import pytest
from apps import run_app

from sam_jax.evaluation.reproduce import paper_code_options
from sam_jax.flags_util import FlagfileError, app_package_dir, expand_flagfiles

ROOT = Path(__file__).resolve().parents[1]


def test_flagfiles_expand_in_order_from_the_apps_folder(tmp_path, monkeypatch):
    app = tmp_path / "repo" / "train"
    (app / "ablations").mkdir(parents=True)
    (app / "base.flags").write_text("# the paper\n--epochs=25\n--lr=1\n\n")
    (app / "ablations" / "x.flags").write_text("--flagfile=base.flags\n// a comment\n--lr=2\n")
    monkeypatch.chdir(tmp_path)  # neither file is reachable from here as written
    assert expand_flagfiles(["--flagfile=ablations/x.flags", "--epochs=1"], app) == [
        "--epochs=25",
        "--lr=1",
        "--lr=2",
        "--epochs=1",
    ]
    # The repository-relative form works too, from anywhere.
    assert expand_flagfiles(["--flagfile", "train/base.flags"], app) == ["--epochs=25", "--lr=1"]


def test_a_missing_or_looping_flagfile_is_named_with_every_place_tried(tmp_path, monkeypatch):
    app = tmp_path / "train"
    app.mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        FlagfileError,
        match=rf"--flagfile=nope.flags: not found; looked in {tmp_path}/nope.flags, "
        rf"{app}/nope.flags",
    ):
        expand_flagfiles(["--flagfile=nope.flags"], app)
    (app / "loop.flags").write_text("--flagfile=loop.flags\n")
    with pytest.raises(FlagfileError, match="includes itself"):
        expand_flagfiles(["--flagfile=loop.flags"], app)


@pytest.mark.slow
def test_the_training_app_refuses_an_unknown_flagfile_cleanly(tmp_path):
    result = run_app(
        "-m",
        "train.main",
        "--flagfile=adutl.flags",
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: --flagfile=adutl.flags: not found; looked in {tmp_path}/adutl.flags" in result.stderr
    assert f"{ROOT}/train/adutl.flags" in result.stderr


def test_the_library_reads_an_apps_flagfile_where_the_app_would(tmp_path, monkeypatch):
    """`eval.reproduce` reads train/paper_code/adult.flags by the apps' lookup: found from any folder in the train
    package (here the checkout's; the installed one in test_wheel.py), and a user's copy as given comes first."""
    monkeypatch.chdir(tmp_path)
    assert app_package_dir("train") == ROOT / "train"
    assert "--volume_batch=4" in paper_code_options() and not [o for o in paper_code_options() if "flagfile" in o]
    (tmp_path / "train" / "paper_code").mkdir(parents=True)
    (tmp_path / "train" / "paper_code" / "adult.flags").write_text("--flagfile=train/adult.flags\n--volume_batch=2\n")
    assert paper_code_options() == ["--volume_batch=2"]
    with pytest.raises(FlagfileError, match="'no_such_app' is not installed"):
        app_package_dir("no_such_app")
