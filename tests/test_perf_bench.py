"""The benchmark's bookkeeping (its figures come from `python -m benchmarks.bench`, never from a test)."""

import json

import pytest

from benchmarks.bench import _median_round


def test_repeated_rounds_report_each_cases_median_round():
    def case(rate, **extra):
        return dict(framework="jax", kind="train", slices_per_s=rate, **extra)

    rounds = [
        [case(2.0, tag="a"), dict(framework="torch", kind="train", error="OOM")],
        [case(1.0, tag="b"), case(0.5)],
        [case(3.0, tag="c"), case(0.7)],
    ]
    first, second = _median_round(rounds)
    assert first["tag"] == "a" and first["slices_per_s_rounds"] == [2.0, 1.0, 3.0]
    # A case that failed in one round reports the median of the rounds that ran (the faster for an even count).
    assert second["slices_per_s"] == 0.7 and second["slices_per_s_rounds"] == [None, 0.5, 0.7]


def test_real_zero_shot_resumes_and_reports_each_layouts_mean_and_spread(tmp_path, monkeypatch):
    """A root whose layouts are all scored is not scored again (no eval.main runs); the table holds each layout's
    mean ± sd over its cases, Dice × 100, failed cases left out."""
    from benchmarks import real_zero_shot

    monkeypatch.setattr(real_zero_shot.subprocess, "run", lambda *a, **k: pytest.fail("a finished layout re-ran"))
    columns = ["case", "domain", "status", "error", "seconds", *real_zero_shot.METRICS]
    for layout, scale in (("t2f_x3", 1.0), ("t1n_t2w_t2f", 0.5)):
        out = tmp_path / layout
        out.mkdir()
        (out / "summary.json").write_text("{}")
        rows = [
            ["a", "GLI", "ok", "", "1", 0.2 * scale, 0.1 * scale, 0.8 * scale, 0.6 * scale],
            ["b", "GLI", "ok", "", "1", 0.4 * scale, 0.3 * scale, 0.6 * scale, 0.8 * scale],
            ["c", "GLI", "failed", "unreadable", "1", "", "", "", ""],
        ]
        (out / "cases.csv").write_text("\n".join(",".join(map(str, r)) for r in [columns, *rows]) + "\n")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    output = tmp_path / "report.json"
    real_zero_shot.main(
        [f"--data_dir={tmp_path}", f"--sam_weights={weights}", f"--root={tmp_path}", "--layouts=t2f_x3,t1n_t2w_t2f",
         f"--output={output}"]
    )  # fmt: skip
    report = json.loads(output.read_text())
    flair, three = report["layouts"]["t2f_x3"], report["layouts"]["t1n_t2w_t2f"]
    assert report["cases"] == flair["cases"] == 2 and report["seconds"] == {}
    assert flair["box_dice"]["mean"] == pytest.approx(30.0) and flair["box_dice"]["sd"] == pytest.approx(2**0.5 * 10)
    assert three["paper_dice"]["mean"] == pytest.approx(35.0) and three["paper_dice"]["sd"] == pytest.approx(2**0.5 * 5)
    assert "| t2f_x3 | 30.0 ± 14.1 | 20.0 ± 14.1 | 70.0 ± 14.1 | 70.0 ± 14.1 |" in output.with_suffix(".md").read_text()
    against = report["paired"]["t1n_t2w_t2f"]["box_dice"]  # case a: 10 − 20, case b: 20 − 40
    assert against["mean"] == pytest.approx(-15.0) and against["sd"] == pytest.approx(2**0.5 * 5)
    assert (against["higher"], against["cases"]) == (0, 2) and list(report["paired"]) == ["t1n_t2w_t2f"]
