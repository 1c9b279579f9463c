"""Segment one case into a NIfTI mask that overlays in ITK-SNAP or 3D Slicer:
`python -m eval.predict --checkpoint WORKDIR --case_dir CASE --output pred.nii.gz [--clicks "x,y,z;..." |
--boxes "x0,y0,x1,y1,z;..."]`.

One click or one box per tumour (the file's voxel indices, as ITK-SNAP or 3D Slicer show them; a box is two opposite
corners on axial slice z); the prompted slice is segmented and the mask propagated slice by slice (from a box, as
LiteMedSAM's challenge does: each next slice prompted by the box of the previous slice's mask). Without prompts the
case's ground truth supplies one per tumour, of the kind the run was trained with (benchmarking)."""

from __future__ import annotations

import time

from absl import app, flags

from eval.common import EXPECTED_ERRORS, check_model_flags, define_model_flags, fail, load_model
from sam_jax.data import find_cases, load_case, save_prediction
from sam_jax.data.brats import empty_segmentation
from sam_jax.evaluation import EvaluationError
from sam_jax.evaluation.figures import overlay
from sam_jax.evaluation.prediction import (
    parse_boxes,
    parse_clicks,
    predict_volume,
    prompts_on_case_grid,
    sorted_box,
)
from sam_jax.evaluation.segmenter import SliceSegmenter
from sam_jax.evaluation.volume import prepare_volume
from sam_jax.flags_util import run_app
from sam_jax.metrics import dice_3d
from sam_jax.outputs import check_output_file

define_model_flags()
flags.DEFINE_string("case_dir", None, "Folder of one case (BraTS file names).")
flags.DEFINE_string("output", None, "Output mask (.nii.gz), in the case's geometry.")
flags.DEFINE_string(
    "clicks",
    "",
    "'x,y,z;x,y,z': one voxel inside each tumour (a voxel that is 0 in all four scans, outside the head, is "
    "refused). Neither this nor --boxes: from the ground truth.",
)
flags.DEFINE_string(
    "boxes",
    "",
    "'x0,y0,x1,y1,z;…': a box around each tumour on axial slice z, two opposite corners (voxel indices, inclusive); "
    "propagated by boxes. Not with --clicks.",
)
flags.DEFINE_string("overlay", "", "Also write a PNG of the four modalities with the contours here.")
flags.mark_flags_as_required(["case_dir", "output"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        output = check_output_file(FLAGS.output, "--output")
        overlay_path = check_output_file(FLAGS.overlay, "--overlay") if FLAGS.overlay else None
        check_model_flags()
        found = find_cases(FLAGS.case_dir)
        if len(found) != 1:
            raise EvaluationError(f"{FLAGS.case_dir}: expected the files of one case, found {len(found)} cases")
        if FLAGS.clicks and FLAGS.boxes:
            raise EvaluationError("--clicks and --boxes: give one kind of prompt")
        clicks = parse_clicks(FLAGS.clicks) if FLAGS.clicks else None
        boxes = parse_boxes(FLAGS.boxes) if FLAGS.boxes else None
        given = clicks is not None or boxes is not None
        if not given and found[0].seg is None:
            raise EvaluationError(f"{FLAGS.case_dir}: no --clicks or --boxes and no segmentation to take them from")
        case = load_case(found[0], require_seg=not given)
        if not given and empty_segmentation(case):
            raise EvaluationError(
                f"{found[0].seg}: the segmentation is empty: no tumour to take prompts from; give --clicks or --boxes"
            )
        clicks, boxes = prompts_on_case_grid(case, clicks, boxes)  # the file's voxels → the case's LPS grid
        trained = load_model()
        tick = time.perf_counter()
        volume = prepare_volume(case, trained.spec)
        segmenter = SliceSegmenter(trained, FLAGS.batch_size)
        mask, used = predict_volume(segmenter, volume, clicks, boxes=boxes, prompt=trained.spec.prompt)
        used = [_to_file(case, p) for p in used]
        seconds = time.perf_counter() - tick
        save_prediction(case, mask, output)
        if overlay_path:
            overlay(
                case.images, case.whole_tumour if case.seg is not None else None, mask, overlay_path, title=case.case_id
            )
    except EXPECTED_ERRORS as e:
        return fail(e)
    kind = "clicks" if len(used[0]) == 3 else "boxes"
    print(f"{output}: {int(mask.sum())} tumour voxels from {kind} {used} in {seconds:.1f} s")
    if empty_segmentation(case):
        print("no Dice: the case's segmentation is empty")
    elif case.seg is not None:
        print(f"whole-tumour Dice against the case's segmentation: {100 * dice_3d(mask, case.whole_tumour):.1f}")
    return 0


def _to_file(case, prompt) -> list[int]:
    """A click (x, y, z) or box (x0, y0, x1, y1, z) of the case's grid → the file's voxel indices."""
    if len(prompt) == 3:
        return list(case.voxel_to_file(prompt))
    x0, y0, x1, y1, z = prompt
    return sorted_box(case.voxel_to_file((x0, y0, z)), case.voxel_to_file((x1, y1, z)))


if __name__ == "__main__":
    run_app(main, __file__)
