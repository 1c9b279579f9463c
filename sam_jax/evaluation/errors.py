"""Errors of the evaluation layer; each message names the file, case or value at fault."""

from sam_jax.errors import SamJaxError


class EvaluationError(SamJaxError, ValueError):
    """Base class: an evaluation that cannot run as asked."""


class CheckpointError(EvaluationError):
    """A trained workdir that is missing files or does not fit its own config or base weights."""


class ClickError(EvaluationError):
    """A click outside the volume or in an unreadable form."""


class CaseError(EvaluationError):
    """A case that cannot be scored (no brain, no ground truth); recorded as failed, the others go on."""


class EmptyGroundTruth(CaseError):
    """A case whose segmentation has no tumour voxel: recorded as `empty_ground_truth` and left out of the means
    (`sam_jax.data.brats.empty_segmentation` gives the policy)."""
