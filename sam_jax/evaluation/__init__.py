"""Evaluation of trained models: loading a run, native-grid inference, the paper/volumetric/interactive protocols,
case-by-case scoring, tables in the paper's layout, and the paper's analyses (LoRA discrepancy, embedding map)."""

from sam_jax.evaluation.errors import CaseError, CheckpointError, ClickError, EvaluationError
from sam_jax.evaluation.trained import TrainedModel, load_trained, load_zero_shot

__all__ = [
    "CaseError",
    "CheckpointError",
    "ClickError",
    "EvaluationError",
    "TrainedModel",
    "load_trained",
    "load_zero_shot",
]
