"""BraTS 2023 lesion-wise Dice and HD95 for one region mask (e.g. whole tumour), following the challenge's
evaluator (rachitsaluja/BraTS-2023-Metrics): 26-connected lesions; ground-truth lesions closer than the dilation
reach merged into one; each ground-truth lesion scored against the union of the predicted lesions that touch its
dilated mask; missed lesions and unmatched predicted lesions count as Dice 0, HD95 374; ground-truth lesions of
at most the size threshold left out of the means (their predicted lesions are still not false positives).
Per-lesion HD95 is `volumetric.hd95`, the evaluator's area-weighted surface-distance definition.
"""

import dataclasses

import numpy as np
from scipy import ndimage

from sam_jax.metrics.errors import MetricInputError
from sam_jax.metrics.inputs import as_mask, as_spacing, check_same_shape
from sam_jax.metrics.volumetric import BRATS_MAX_HD95, dice_3d, hd95

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
# The official evaluator dilates with the 18-connected element (scipy's generate_binary_structure(3, 2)).
DILATION_18 = ndimage.generate_binary_structure(3, 2)


@dataclasses.dataclass(frozen=True)
class LesionRule:
    dilation_iterations: int
    small_lesion_mm3: float  # ground-truth lesions with volume <= this are left out


# Per-domain settings of the 2023 challenge; the threshold is a volume in mm³, i.e. 50 voxels at BraTS's 1 mm.
BRATS_2023_LESION_RULES = {
    "GLI": LesionRule(dilation_iterations=3, small_lesion_mm3=50.0),
    "SSA": LesionRule(dilation_iterations=3, small_lesion_mm3=50.0),
    "PED": LesionRule(dilation_iterations=3, small_lesion_mm3=50.0),
    "MEN": LesionRule(dilation_iterations=1, small_lesion_mm3=50.0),
    "MET": LesionRule(dilation_iterations=1, small_lesion_mm3=2.0),
}


@dataclasses.dataclass(frozen=True)
class LesionScore:
    """One (merged) ground-truth lesion and its score; `counted` is False for lesions dropped by the size rule."""

    gt_label: int
    voxels: int
    volume_mm3: float
    matched_pred_labels: tuple[int, ...]
    dice: float
    hd95: float
    counted: bool


@dataclasses.dataclass(frozen=True)
class LesionWiseResult:
    dice: float
    hd95: float
    lesions: tuple[LesionScore, ...]
    false_positive_labels: tuple[int, ...]  # labels of the predicted 26-connected components
    legacy_dice: float
    legacy_hd95: float

    @property
    def num_true_positive(self) -> int:
        return sum(1 for s in self.lesions if s.counted and s.matched_pred_labels)

    @property
    def num_false_negative(self) -> int:
        return sum(1 for s in self.lesions if s.counted and not s.matched_pred_labels)

    @property
    def num_false_positive(self) -> int:
        return len(self.false_positive_labels)


def merged_gt_lesions(gt: np.ndarray, dilation_iterations: int) -> tuple[np.ndarray, int]:
    """Labels ground-truth voxels by the 26-connected component of the dilated mask they fall in, so lesions whose
    dilations touch become one lesion; the voxels themselves are not changed."""
    if dilation_iterations == 0:  # scipy reads iterations=0 as "dilate until nothing changes"
        return ndimage.label(gt, structure=CONNECTIVITY_26)
    dilated = ndimage.binary_dilation(gt, structure=DILATION_18, iterations=dilation_iterations)
    labels, count = ndimage.label(dilated, structure=CONNECTIVITY_26)
    return np.where(gt, labels, 0), count


def _padded_box(box: tuple[slice, ...], pad: int, shape) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(box, shape))


def _lesion_hd95(pred_union, lesion, pred, gt, legacy_hd95: float, spacing) -> float:
    """A lesion's HD95; that of the whole volume where the lesion is all of gt and its match all of pred (one lesion,
    every predicted component on it: the common case, and seconds on a real volume)."""
    if np.array_equal(lesion, gt) and np.array_equal(pred_union, pred):
        return legacy_hd95
    return hd95(pred_union, lesion, spacing, one_empty=BRATS_MAX_HD95)


def _resolve_rule(domain: str, dilation_iterations, small_lesion_mm3) -> LesionRule:
    if domain not in BRATS_2023_LESION_RULES:
        raise MetricInputError(f"domain: expected one of {sorted(BRATS_2023_LESION_RULES)}, got {domain!r}")
    rule = BRATS_2023_LESION_RULES[domain]
    rule = LesionRule(
        rule.dilation_iterations if dilation_iterations is None else int(dilation_iterations),
        rule.small_lesion_mm3 if small_lesion_mm3 is None else float(small_lesion_mm3),
    )
    if rule.dilation_iterations < 0:
        raise MetricInputError(f"dilation_iterations: expected >= 0, got {rule.dilation_iterations}")
    return rule


def lesion_wise_scores(
    pred,
    gt,
    spacing=(1.0, 1.0, 1.0),
    *,
    domain: str = "GLI",
    dilation_iterations: int | None = None,
    small_lesion_mm3: float | None = None,
) -> LesionWiseResult:
    """Lesion-wise Dice and HD95 (mm) of one region, with per-lesion details and the legacy volumetric scores.

    pred, gt: (Z, Y, X) bool masks of one region (WT, TC or ET); spacing: mm per array axis. `domain` picks the
    challenge's dilation and size threshold; `dilation_iterations` / `small_lesion_mm3` override them. Both masks
    without counted lesions and without false positives → Dice 1, HD95 0.
    """
    pred = as_mask(pred, "pred", ndim=3)
    gt = as_mask(gt, "gt", ndim=3)
    check_same_shape(pred, gt)
    spacing = as_spacing(spacing, 3)
    rule = _resolve_rule(domain, dilation_iterations, small_lesion_mm3)
    voxel_mm3 = float(np.prod(spacing))

    legacy_hd95 = hd95(pred, gt, spacing)
    gt_labels, _ = merged_gt_lesions(gt, rule.dilation_iterations)
    pred_labels, _ = ndimage.label(pred, structure=CONNECTIVITY_26)
    pad = rule.dilation_iterations
    lesions, matched = [], set()
    for label, box in enumerate(ndimage.find_objects(gt_labels), start=1):
        # Work in the lesion's box grown by the dilation reach: nothing outside it can touch the dilated lesion.
        near = _padded_box(box, pad, gt.shape)
        lesion_near = gt_labels[near] == label
        reach = ndimage.binary_dilation(lesion_near, structure=DILATION_18, iterations=pad) if pad else lesion_near
        touching = np.unique(pred_labels[near][reach])
        touching = tuple(int(t) for t in touching[touching != 0])
        matched.update(touching)
        lesion = gt_labels == label
        pred_union = np.isin(pred_labels, touching)
        voxels = int(lesion_near.sum())
        lesions.append(
            LesionScore(
                gt_label=label,
                voxels=voxels,
                volume_mm3=voxels * voxel_mm3,
                matched_pred_labels=touching,
                dice=dice_3d(pred_union, lesion),
                hd95=_lesion_hd95(pred_union, lesion, pred, gt, legacy_hd95, spacing),
                counted=voxels * voxel_mm3 > rule.small_lesion_mm3,
            )
        )

    false_positives = tuple(int(p) for p in np.unique(pred_labels) if p != 0 and p not in matched)
    counted = [s for s in lesions if s.counted]
    denominator = len(counted) + len(false_positives)
    if denominator == 0:
        dice, distance = 1.0, 0.0
    else:
        dice = sum(s.dice for s in counted) / denominator
        distance = (sum(s.hd95 for s in counted) + BRATS_MAX_HD95 * len(false_positives)) / denominator
    return LesionWiseResult(
        dice=dice,
        hd95=distance,
        lesions=tuple(lesions),
        false_positive_labels=false_positives,
        legacy_dice=dice_3d(pred, gt),
        legacy_hd95=legacy_hd95,
    )
