"""Cases cut to a box around their tumour: a few slices, quick to train on and to score, the tumour inside."""

from pathlib import Path

import nibabel as nib
import numpy as np

from sam_jax.data.brats import CaseFiles


def box_around_tumour(tumour: np.ndarray, size: tuple[int, ...]) -> tuple[slice, ...]:
    """The `size` box centred on the tumour's mean voxel, moved inside the volume's start where it would cross it."""
    centre = [int(np.mean(i)) for i in np.nonzero(tumour)]
    return tuple(slice(max(c - n // 2, 0), max(c - n // 2, 0) + n) for c, n in zip(centre, size))


def cut_case(files: CaseFiles, out: Path, size: tuple[int, ...]) -> Path:
    """The case's files cut to the box around its tumour, in `out/<case id>` (affine and header kept)."""
    box = box_around_tumour(np.asarray(nib.load(files.seg).dataobj) > 0, size)
    folder = Path(out) / files.case_id
    folder.mkdir(parents=True)
    for path in [*files.images.values(), files.seg]:
        image = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[box], image.affine, image.header), folder / path.name)
    return folder
