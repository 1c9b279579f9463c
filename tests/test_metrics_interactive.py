"""NoC@85/90 and mean Dice after k clicks on hand-made Dice curves."""

import numpy as np
import pytest

from sam_jax.metrics import (
    MetricInputError,
    clicks_to_reach,
    mean_dice_after_clicks,
    mean_noc,
    noc_failures,
    noc_summary,
)


def test_clicks_to_reach_counts_from_one():
    curve = [0.5, 0.7, 0.86, 0.88, 0.91]
    assert clicks_to_reach(curve, 0.85) == 3
    assert clicks_to_reach(curve, 0.90) == 5
    assert clicks_to_reach(curve, 0.50) == 1  # reaching exactly the threshold counts


def test_noc_is_capped_and_failures_count_as_the_cap():
    never = [0.6] * 25
    late = [0.6] * 20 + [0.95] * 5  # reaches 0.9 only at click 21, beyond the cap
    short = [0.6, 0.7]  # ran only two clicks and never got there
    assert clicks_to_reach(never, 0.9) == 20
    assert clicks_to_reach(late, 0.9) == 20
    assert clicks_to_reach(short, 0.9) == 20
    assert clicks_to_reach(late, 0.9, max_clicks=21) == 21


def test_summary_over_cases():
    curves = [[0.86, 0.91, 0.95], [0.5, 0.86, 0.89], [0.2, 0.3, 0.4]]
    # NoC@85: 1, 2, 20 -> 23/3; NoC@90: 2, 20, 20 -> 14; failures: 1 and 2.
    assert mean_noc(curves, 0.85) == pytest.approx(23 / 3)
    assert noc_failures(curves, 0.90) == 2
    assert noc_summary(curves) == {
        "noc@85": pytest.approx(23 / 3),
        "failures@85": 1,
        "noc@90": pytest.approx(14.0),
        "failures@90": 2,
    }
    np.testing.assert_allclose(mean_dice_after_clicks(curves), [1.56 / 3, 2.07 / 3, 2.24 / 3])


def test_bad_curves_raise_named_errors():
    with pytest.raises(MetricInputError, match="percentages"):
        clicks_to_reach([50.0, 90.0], 0.85)
    with pytest.raises(MetricInputError, match="same number of clicks"):
        mean_dice_after_clicks([[0.5], [0.5, 0.6]])
    with pytest.raises(MetricInputError, match="at least one"):
        mean_noc([], 0.85)
    with pytest.raises(MetricInputError, match="max_clicks"):
        clicks_to_reach([0.5], 0.85, max_clicks=0)
