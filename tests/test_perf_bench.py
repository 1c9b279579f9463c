"""The benchmark's bookkeeping (its figures come from `python -m benchmarks.bench`, never from a test)."""

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
