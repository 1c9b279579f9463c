"""The paper's Tables 1–5 rebuilt from evaluation folders: runs placed on paper rows by their run spec and training
settings (layout, trainable preset, training domain, two-step, zero-shot), best preferred to final, published values
beside ours with the differences worked by hand; rows without a run shown as "–", cells the paper leaves empty as
"n/a". Every run `eval.reproduce` makes, in both variants, lands on a paper row."""

import csv
import io
import json
from pathlib import Path

import pytest
from absl import flags

from sam_jax.adaptation.modalities import LAYOUTS
from sam_jax.evaluation.paper_tables import TABLES, entries, write_paper_tables
from sam_jax.evaluation.reproduce import TABLES as RUN_TABLES
from sam_jax.evaluation.reproduce import VARIANTS, plan
from sam_jax.evaluation.tables import load_summaries, write_tables
from sam_jax.evaluation.trained import zero_shot_name
from sam_jax.flags_util import app_package_dir, config_from_flags, define_flags, expand_flagfiles
from sam_jax.spec import RunSpec
from sam_jax.training.config import TrainConfig


def _run(root, name, *, domain="GLI", init_adapter="", **spec):
    """A run directory whose config.json records `spec` and the training settings the tables read."""
    folder = root / name
    folder.mkdir(parents=True)
    config = {**RunSpec(**spec).to_dict(), "domain": domain, "init_adapter": init_adapter, "workdir": str(folder)}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _summary(folder, model, domain, column, paper_dice, checkpoint=""):
    folder.mkdir(parents=True)
    summary = {
        "model": model,
        "domain": domain,
        "column": column,
        "checkpoint": checkpoint,
        "means": {"paper_dice": paper_dice, "dice_3d": paper_dice / 2},
    }
    (folder / "summary.json").write_text(json.dumps(summary))


def _workdir(root):
    adult = _run(root, "adult", modalities="all4", trainable="lora", base_sha256="abc")
    _summary(adult / "eval" / "GLI_best", "adult_best", "GLI", "VD1", 0.60, checkpoint=str(adult))
    _summary(adult / "eval" / "MEN_best", "adult_best", "MEN", "VD2", 0.70)
    _summary(adult / "eval" / "GLI", "adult", "GLI", "VD1", 0.10)  # the final model: the best one is shown
    flair = _run(root, "flair_gli", modalities="t2f_x3", trainable="lora", base_sha256="abc")
    _summary(flair / "eval" / "MEN", "flair_gli", "MEN", "VD2", 0.80)
    two_step = _run(
        root,
        "two_step_2",
        init_adapter="step1/adapter.safetensors",
        modalities="all4",
        trainable="lora_frozen_patch",
        base_sha256="abc",
    )
    _summary(two_step / "eval" / "PED", "two_step_2", "PED", "D3", 0.25)
    full = _run(
        root,
        "demo",
        model_type="tiny",
        image_size=64,
        modalities="all4",
        trainable="full",
        lora_rank=0,
        base_sha256="random-init-seed-0",
    )
    _summary(full / "eval" / "GLI", "demo", "GLI", "VD1", 0.123)
    crossed = _run(root, "cross_on", modalities="all4", trainable="lora", cross_slice=True, slices=5, base_sha256="abc")
    _summary(crossed / "eval" / "GLI", "cross_on", "GLI", "VD1", 0.5)
    _summary(root / "sam_vit_b_zero_shot_t2f_x3" / "eval" / "GLI", "sam_vit_b_zero_shot_t2f_x3", "GLI", "VD1", 0.05)
    raw = "sam_vit_b_zero_shot_t1n_t2w_t2f_none_crop"  # --zero_shot_input=raw_crop's name
    _summary(root / raw / "eval" / "GLI", raw, "GLI", "VD1", 0.04)
    _summary(root / "someone_else" / "eval" / "SSA", "someone_else", "SSA", "D4", 0.3)  # no config, no zero-shot name
    return load_summaries([root])


def _csv(out, key):
    return list(csv.reader(io.StringIO((out / f"paper_{key}.csv").read_text())))


def test_runs_are_placed_on_paper_rows_by_their_spec(tmp_path):
    models, unknown = entries(_workdir(tmp_path / "workdir"))
    assert [m.label for m in models] == [
        "adult_best",
        "cross_on",
        "demo (tiny, 64 px, random init)",
        "flair_gli",
        "sam_vit_b_zero_shot_t1n_t2w_t2f_none_crop (raw crop)",
        "sam_vit_b_zero_shot_t2f_x3",
        "two_step_2",
    ]
    # Best only: the final model's 10.0 is not mixed in.
    assert models[0].values == {"VD1": pytest.approx(60.0), "VD2": pytest.approx(70.0)}
    assert list(unknown) == ["someone_else"]
    assert [t.key for t in TABLES] == ["table1", "table2", "table3", "table4", "table5"]


def _no_run(label, *published):
    """A paper row no run of ours matches: its published values (a string each, as printed) and dashes."""
    return [label, "–"] + [cell for p in published for cell in ("–", p, "–")]


def test_paper_tables_show_published_values_ours_and_differences(tmp_path):
    out = tmp_path / "tables"
    text = write_paper_tables(_workdir(tmp_path / "workdir"), out)
    head = ["paper row", "our run"] + [
        f"{c} {p}" for c in ("VD1", "VD2", "D3", "D4") for p in ("ours", "paper", "diff")
    ]

    table1 = _csv(out, "table1")
    assert table1[0] == head
    assert table1[1] == _no_run("Zero-shot, T1", "4.33", "1.55", "3.43", "7.59")
    assert table1[2] == _no_run("LoRA, T1", "58.45", "74.16", "65.68", "52.34")
    # 5.00 − 3.85 = +1.15; 80.00 − 74.72 = +5.28; 4.00 − 5.14 = −1.14.
    assert table1[7] == ["Zero-shot, T2-FLAIR", "sam_vit_b_zero_shot_t2f_x3", "5.00", "3.85", "+1.15"] + [
        "–",
        "2.19",
        "–",
        "–",
        "3.08",
        "–",
        "–",
        "7.85",
        "–",
    ]
    assert table1[8] == ["LoRA, T2-FLAIR", "flair_gli", "–", "59.64", "–", "80.00", "74.72", "+5.28"] + [
        "–",
        "65.46",
        "–",
        "–",
        "52.73",
        "–",
    ]
    assert table1[9][:5] == [
        "Zero-shot, [T1, T2, T2-FLAIR]",
        "sam_vit_b_zero_shot_t1n_t2w_t2f_none_crop (raw crop)",
        "4.00",
        "5.14",
        "-1.14",
    ]
    assert table1[10] == _no_run("LoRA, [T1, T2, T2-FLAIR]", "57.87", "74.44", "65.37", "52.67")
    assert len(table1) == 11  # the cross-slice run is not the paper's method: no row of its own

    table2 = _csv(out, "table2")
    assert table2[1] == _no_run("T1 ×3", "58.45", "74.16", "65.62", "52.34")  # 65.62: Table 1 prints 65.68
    assert table2[4][:8] == ["T2-FLAIR ×3", "flair_gli", "–", "59.64", "–", "80.00", "74.72", "+5.28"]
    # 60.00 − 61.85 = −1.85; 70.00 − 65.68 = +4.32.
    assert table2[6] == [
        "Ours(TD1)",
        "adult_best",
        "60.00",
        "61.85",
        "-1.85",
        "70.00",
        "65.68",
        "+4.32",
        "–",
        "50.65",
        "–",
        "–",
        "56.20",
        "–",
    ]
    assert table2[7] == _no_run("Ours(TD2)", "58.38", "75.27", "65.62", "52.35")
    assert len(table2) == 8

    # 25.00 − 19.36 = +5.64.
    table3 = _csv(out, "table3")
    assert table3[1] == _no_run("Step 1 alone: patch embedding (not in the paper)", "n/a", "n/a", "n/a", "n/a")
    assert table3[2] == [
        "2 Step",
        "two_step_2",
        "–",
        "30.36",
        "–",
        "–",
        "32.77",
        "–",
        "25.00",
        "19.36",
        "+5.64",
        "–",
        "26.84",
        "–",
    ]
    assert table3[3] == ["Ours (TD1)"] + table2[6][1:]
    # 12.30 − 17.19 = −4.89.
    assert _csv(out, "table4")[1:] == [
        [
            "SAM FT",
            "demo (tiny, 64 px, random init)",
            "12.30",
            "17.19",
            "-4.89",
            "–",
            "14.92",
            "–",
            "–",
            "11.96",
            "–",
            "–",
            "11.71",
            "–",
        ],
        ["Ours"] + table2[6][1:],
    ]
    # Table 5 prints one decimal: 60.0 − 61.9 = −1.9; 70.0 − 65.7 = +4.3.
    assert _csv(out, "table5")[1:] == [
        _no_run("SAM-Med2D", "47.2", "74.7", "52.8", "42.3"),
        _no_run("Ranem et al.", "61.9", "n/a", "n/a", "n/a"),
        [
            "Ours(TD1)",
            "adult_best",
            "60.0",
            "61.9",
            "-1.9",
            "70.0",
            "65.7",
            "+4.3",
            "–",
            "50.7",
            "–",
            "–",
            "56.2",
            "–",
        ],
        _no_run("Ours(TD2)", "58.4", "75.3", "65.7", "52.4"),
    ]

    assert "### Table 4: full fine-tuning vs LoRA, 4 channels, trained on TD1" in text
    assert (
        "| SAM FT | demo (tiny, 64 px, random init) | 12.30 | 17.19 | -4.89 | – | 14.92 | – | – | 11.96 | – "
        "| – | 11.71 | – |"
    ) in text
    assert "| paper row | our run | VD1 ours | VD1 paper | VD1 Δ |" in text
    assert "Runs that match no paper row: cross_on\n" in text
    assert "someone_else: no run directory (config.json) found" in text


def test_per_metric_tables_follow_the_paper_tables(tmp_path):
    summaries = _workdir(tmp_path / "workdir")
    out = tmp_path / "tables"
    text = write_tables(summaries, out, preface=write_paper_tables(summaries, out))
    assert text.index("### Table 1") < text.index("### Dice, paper protocol (%)") < text.index("### Whole-tumour 3-D")
    assert "| adult_best | 60.0 | 70.0 |  |  |" in text and "| adult | 10.0 |  |  |  |" in text
    assert "| flair_gli |  | 40.0 |  |  |" in text  # dice_3d = paper_dice / 2
    assert (out / "tables.md").read_text() == text and (out / "paper_dice.csv").is_file()


def _as_run_would_record(step, trained: dict):
    """What `step` leaves behind, without running it: a training step its config.json (its flags parsed as
    train.main parses them), an evaluation its summary.json named as eval.main names the model."""
    args = dict(a[2:].split("=", 1) for a in step.args[1:] if a.startswith("--") and "=" in a)
    if step.kind == "train":
        flag_values = flags.FlagValues()
        define_flags(TrainConfig, flag_values)
        flag_values(["train.main", *expand_flagfiles(list(step.args[1:]), app_package_dir("train"))])
        cfg = config_from_flags(TrainConfig, flag_values)
        workdir = Path(cfg.workdir)
        workdir.mkdir(parents=True)
        (workdir / "config.json").write_text(json.dumps({**cfg.to_dict(), "base_sha256": "abc"}))
        trained[step.run] = workdir
        return
    domain = step.kind.split()[1]
    column = {"GLI": "VD1", "MEN": "VD2", "PED": "D3", "SSA": "D4"}[domain]
    if "--zero_shot" in step.args:
        model = zero_shot_name("vit_b", LAYOUTS[args["modalities"]], 1024, args["zero_shot_input"])
        _summary(step.done.parent, model, domain, column, 0.05)
    else:
        _summary(step.done.parent, f"{step.run}_best", domain, column, 0.5, checkpoint=str(trained[step.run]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_run_reproduce_makes_is_placed(tmp_path, variant):
    steps = plan(sorted(RUN_TABLES), variant, tmp_path, "/data", "sam.safetensors")
    trained = {}
    for step in steps:
        _as_run_would_record(step, trained)
    text = write_paper_tables(load_summaries([tmp_path / variant]), tmp_path / "tables")
    assert "match no paper row" not in text and "not placed" not in text
    # Every paper row of ours has its run, with all four columns scored.
    for table in TABLES:
        for cells in _csv(tmp_path / "tables", table.key)[1:]:
            if cells[0] not in ("SAM-Med2D", "Ranem et al."):
                assert cells[1] != "–" and "–" not in cells[2::3], cells
    zero_shot = _csv(tmp_path / "tables", "table1")[1][1]
    original = "_original_code (original code)" if variant == "paper_code" else ""
    assert zero_shot == "sam_vit_b_zero_shot_t1n_x3" + original
