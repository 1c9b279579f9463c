"""Exceptions raised by the BraTS data layer; each names the offending file (or directory) and the fault."""

from __future__ import annotations

from pathlib import Path

from sam_jax.errors import SamJaxError


class DataError(SamJaxError):
    """Base class for every data-layer error."""


class CaseFault(DataError):
    """One problem with one file of a case, e.g. a missing modality or a NaN voxel."""

    def __init__(self, path: Path | str, fault: str):
        self.path = Path(path)
        self.fault = fault
        super().__init__(f"{self.path}: {fault}")


class BadCaseError(DataError):
    """A case failed validation; `faults` lists every problem found in it."""

    def __init__(self, case_id: str, faults: list[CaseFault]):
        self.case_id = case_id
        self.faults = faults
        lines = "\n  ".join(str(f) for f in faults)
        super().__init__(f"case {case_id} is unusable:\n  {lines}")


class SplitMismatchError(DataError):
    """The saved train/val split does not cover the cases now in the dataset."""


class CacheError(DataError):
    """The preprocessing cache is missing, stale or was built with other settings."""
