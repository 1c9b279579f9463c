"""A run's workdir is claimed before any compute: it must be writable, and a workdir that already holds a run keeps
it. Its config.json is compared with this run's settings before anything is written: a run with progress
(checkpoints or an adapter) resumes only with the same model, data and optimisation; the bookkeeping settings
(declared `resume="may_change"`) may change between the runs (a longer run, another logging rate). config.json is
then written atomically."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from absl import logging

from sam_jax import settings
from sam_jax.distributed import ProcessGroup
from sam_jax.errors import SamJaxError
from sam_jax.outputs import check_output_dir, write_atomic
from sam_jax.training.config import TrainConfig

CONFIG = "config.json"
# What a resumed run may change, the settings declared `resume="may_change"`: how long it runs, how it logs and
# saves, where the inputs now lie (the base weights' identity is `base_sha256`, compared like every other setting)
# and how much work runs in parallel.
MAY_CHANGE_ON_RESUME = settings.names(TrainConfig, resume="may_change")
# How the processes of a launch found each other (a new port each time) is no change to the run at all, and nor is
# where the workdir now lies: a copied or moved workdir resumes.
NOT_THE_RUN = frozenset(f.name for f in dataclasses.fields(ProcessGroup)) | {"workdir"}


class WorkdirError(SamJaxError):
    """A workdir that cannot take this run; nothing in it was changed."""


def has_progress(workdir: Path) -> bool:
    checkpoints = workdir / "checkpoints"
    return (workdir / "adapter.safetensors").exists() or (
        checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
    )


def differences(saved: TrainConfig, now: TrainConfig) -> dict[str, tuple]:
    """{setting: (saved value, value now)} for every setting of the run that differs."""
    old, new = saved.to_dict(), now.to_dict()
    return {k: (old.get(k), new[k]) for k in new if k not in NOT_THE_RUN and old.get(k) != new[k]}


def claim(cfg: TrainConfig) -> Path:
    """Make (or reuse) `cfg.workdir` for this run and record `cfg` in its config.json; see the module."""
    workdir = check_output_dir(cfg.workdir, "--workdir")
    path = workdir / CONFIG
    if path.exists():
        try:
            saved = TrainConfig.from_json(path.read_text(), str(path))
        except SamJaxError as e:
            raise WorkdirError(
                f"{e}. It was left as it is: move it away to start afresh in {workdir}, or choose another --workdir"
            ) from None
        changed = differences(saved, cfg)
        blocking = {k: v for k, v in changed.items() if k not in MAY_CHANGE_ON_RESUME}
        if blocking and has_progress(workdir):
            listed = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in sorted(blocking.items()))
            raise WorkdirError(
                f"{workdir} holds a run with other settings ({listed}). Nothing was changed: choose "
                "another --workdir, or resume with the settings of its config.json"
            )
        if changed:
            logging.warning(
                "%s: settings changed since the last run: %s",
                path,
                ", ".join(f"{k} {a!r} → {b!r}" for k, (a, b) in sorted(changed.items())),
            )
    write_atomic(path, cfg.to_json())
    return workdir
