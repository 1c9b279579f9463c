"""Interactive-segmentation summaries from Dice after each click: the number of clicks to reach a Dice threshold
(NoC@85, NoC@90; capped, failures counted as the cap, as in RITM) and the mean Dice after k clicks over cases."""

import numpy as np

from sam_jax.metrics.errors import MetricInputError

NOC_MAX_CLICKS = 20


def _as_dice_curve(dice_after_clicks, name: str) -> np.ndarray:
    curve = np.asarray(dice_after_clicks, dtype=np.float64)
    if curve.ndim != 1 or curve.size == 0:
        raise MetricInputError(
            f"{name}: expected a non-empty 1-D sequence of Dice after clicks 1..K, got shape {curve.shape}"
        )
    if not np.all((curve >= 0) & (curve <= 1)):
        raise MetricInputError(f"{name}: Dice values must lie in [0, 1] (not percentages), got {curve.tolist()}")
    return curve


def _first_click_reaching(dice_after_clicks, threshold: float, max_clicks: int) -> int | None:
    if int(max_clicks) < 1:
        raise MetricInputError(f"max_clicks: expected a positive number of clicks, got {max_clicks}")
    curve = _as_dice_curve(dice_after_clicks, "dice_after_clicks")[:max_clicks]
    reached = np.flatnonzero(curve >= threshold)
    return int(reached[0]) + 1 if reached.size else None


def clicks_to_reach(dice_after_clicks, threshold: float, max_clicks: int = NOC_MAX_CLICKS) -> int:
    """The first k (1-based; element k-1 is the Dice after k clicks) with Dice >= threshold among the first
    `max_clicks` clicks; `max_clicks` when it is never reached there, however many clicks were run."""
    first = _first_click_reaching(dice_after_clicks, threshold, max_clicks)
    return int(max_clicks) if first is None else first


def mean_noc(dice_curves, threshold: float, max_clicks: int = NOC_MAX_CLICKS) -> float:
    """Mean number of clicks over cases (each case a Dice-after-clicks sequence; lengths may differ)."""
    if len(dice_curves) == 0:
        raise MetricInputError("dice_curves: expected at least one case")
    return float(np.mean([clicks_to_reach(c, threshold, max_clicks) for c in dice_curves]))


def noc_failures(dice_curves, threshold: float, max_clicks: int = NOC_MAX_CLICKS) -> int:
    """How many cases never reach `threshold` within `max_clicks` clicks."""
    return sum(1 for c in dice_curves if _first_click_reaching(c, threshold, max_clicks) is None)


def mean_dice_after_clicks(dice_curves) -> np.ndarray:
    """(K,) mean over cases of the Dice after k = 1..K clicks; every case must have K values."""
    lengths = {len(c) for c in dice_curves}
    if len(lengths) != 1:
        raise MetricInputError(
            f"dice_curves: expected every case to have the same number of clicks, got lengths {sorted(lengths)}"
        )
    return np.mean([_as_dice_curve(c, "dice_curves") for c in dice_curves], axis=0)


def noc_summary(dice_curves, max_clicks: int = NOC_MAX_CLICKS) -> dict[str, float]:
    """NoC@85 and NoC@90 with their failure counts, the figures interactive-segmentation papers report."""
    summary = {}
    for percent in (85, 90):
        summary[f"noc@{percent}"] = mean_noc(dice_curves, percent / 100, max_clicks)
        summary[f"failures@{percent}"] = noc_failures(dice_curves, percent / 100, max_clicks)
    return summary
