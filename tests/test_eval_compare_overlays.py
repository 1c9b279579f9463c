"""`eval.compare_overlays` on two hand-made evaluation folders: the cases drawn are those the models disagree on most
(spread of dice_3d, worked by hand, failed cases and cases without a saved mask left out), each a PNG that decodes;
a wrong input is an EvaluationError naming the fault."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from apps import run_app
from PIL import Image

from sam_jax.data import find_cases, load_case, save_prediction
from sam_jax.evaluation import EvaluationError
from sam_jax.evaluation.disagreement import compare

ROOT = Path(__file__).resolve().parents[1]
CASES = [f"BraTS-GLI-0000{i}-000" for i in range(1, 6)]
# dice_3d per case: A, B. Spreads: 1 → 0.1, 2 → 0.4, 3 → 0.6; case 4 failed in B; case 5 (spread 0.9) has no mask
# saved by B. The ranking: 3, 2, 1.
SCORES = {"A": [0.9, 0.5, 0.7, 0.9, 0.95], "B": [0.8, 0.9, 0.1, None, 0.05]}


def _eval_folder(root: Path, model: str, data_dir: Path) -> Path:
    folder = root / model / "eval" / "GLI"
    (folder / "predictions").mkdir(parents=True)
    with open(folder / "cases.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["case", "domain", "status", "error", "seconds", "paper_dice", "dice_3d"])
        writer.writeheader()
        for case_id, score in zip(CASES, SCORES[model]):
            failed = score is None
            writer.writerow(
                {
                    "case": case_id,
                    "domain": "GLI",
                    "status": "failed" if failed else "ok",
                    "error": "unreadable" if failed else "",
                    "seconds": 1.0,
                    "paper_dice": 0.5,
                    "dice_3d": "" if failed else score,
                }
            )
    for files in find_cases(data_dir, "GLI"):
        if model == "B" and files.case_id == CASES[4]:
            continue
        case = load_case(files)
        mask = case.whole_tumour.copy()
        if model == "B":
            mask[:, :, :] = np.roll(mask, 1, axis=0)  # B's masks are shifted by one voxel
        save_prediction(case, mask, folder / "predictions" / f"{files.case_id}.nii.gz")
    (folder / "summary.json").write_text(json.dumps({"model": model, "domain": "GLI", "data_dir": str(data_dir)}))
    return folder


def _run(args, cwd):
    return run_app("-m", "eval.compare_overlays", *args, cwd=cwd, timeout=120)


def test_cases_where_models_disagree_most_are_drawn_in_order(tmp_path, write_tiny_case):
    data = tmp_path / "brats"
    for case_id in CASES:
        write_tiny_case(data, case_id)
    folders = [_eval_folder(tmp_path / "workdir", model, data) for model in ("A", "B")]
    out = tmp_path / "compare"
    result = _run([str(f) for f in folders] + ["--cases", "2", "--output_dir", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr
    listed = [line.split()[1] for line in result.stdout.splitlines() if re.match(r"\d+\. ", line)]
    assert listed == [CASES[2], CASES[1]]
    assert f"{CASES[2]}  spread=0.6000  A=0.7000  B=0.1000" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [f"{CASES[1]}.png", f"{CASES[2]}.png"]
    with Image.open(out / f"{CASES[2]}.png") as image:
        image.load()
        assert image.width > 300 and image.height > 200

    # What the app prints as one `error:` line (eval.common.fail): one folder has nothing to compare with; a folder
    # that is not an evaluation's.
    with pytest.raises(EvaluationError, match=r"at least two evaluation folders to compare \(got 1\)"):
        compare([folders[0]], out)
    with pytest.raises(EvaluationError, match="no cases.csv"):
        compare([folders[0], data], out)
