"""Resumable checkpoints with orbax: trainable parameters, optimiser state, step, RNG and the data iterator.

Saves are asynchronous and atomic (orbax finalises a step directory only once it is complete), so a run killed at
any moment resumes from its last finished checkpoint. The latest `keep` steps are kept, plus the best one by
validation Dice (every validation pass is checkpointed with its score).
"""

from __future__ import annotations

from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

from sam_jax.outputs import disk_full, free_bytes, reporting_full_disk

BEST_METRIC = "val_dice"
_OVERHEAD = 1 << 20  # bytes of orbax metadata and the data iterator's state, generously


def manager(workdir, keep: int) -> ocp.CheckpointManager:
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [
            ocp.checkpoint_managers.LatestN(n=keep),
            ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m[BEST_METRIC], n=1, keep_checkpoints_without_metrics=False
            ),
        ]
    )
    # best_fn is what makes orbax write a step's metrics at all (without it BestN has nothing to rank).
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, best_fn=lambda m: m[BEST_METRIC], best_mode="max", create=True
    )
    return ocp.CheckpointManager(
        Path(workdir).absolute() / "checkpoints", options=options, item_names=("state", "data")
    )


def save(mngr: ocp.CheckpointManager, step: int, state: dict, data_iterator, metrics: dict | None = None) -> None:
    """Start an asynchronous save; refused with `OutputError` (nothing written) when the disk has no room for it."""
    needed = int(sum(getattr(x, "nbytes", 8) for x in jax.tree.leaves(state)) * 1.1) + _OVERHEAD
    if free_bytes(mngr.directory) < 2 * needed:  # nearly full: let the save in flight take its room first
        with reporting_full_disk(mngr.directory):
            mngr.wait_until_finished()
    if free_bytes(mngr.directory) < needed:
        raise disk_full(Path(mngr.directory) / str(step), needed)
    with reporting_full_disk(Path(mngr.directory) / str(step), needed):  # an earlier async save may fail here
        mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)
            ),
            metrics=metrics,
            force=True,
        )


def finish(mngr: ocp.CheckpointManager) -> None:
    """Wait for the saves in flight and close; a save the disk had no room for is an `OutputError`."""
    try:
        with reporting_full_disk(mngr.directory):
            mngr.wait_until_finished()
    finally:
        mngr.close()


def last_complete_step(workdir) -> int | None:
    """The newest checkpoint on disk that orbax finalised (a step directory only gets its number once complete)."""
    folder = Path(workdir) / "checkpoints"
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    return max(steps, default=None)


def restore_latest(mngr: ocp.CheckpointManager, state_like: dict, data_iterator):
    """The latest checkpoint's state (shaped like `state_like`), with the iterator rewound in place; or None."""
    step = mngr.latest_step()
    if step is None:
        return None
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state_like), data=grain.checkpoint.CheckpointRestore(data_iterator)
        ),
    )
    return restored["state"]


def best_step(mngr: ocp.CheckpointManager) -> int | None:
    """The kept step with the highest validation Dice, or None if no checkpoint carries one."""
    scored = [
        (m[BEST_METRIC], s) for s in mngr.all_steps() if (m := mngr.metrics(s)) and m.get(BEST_METRIC) is not None
    ]
    return max(scored, key=lambda t: (t[0], -t[1]))[1] if scored else None  # ties: the earliest


def restore_state(mngr: ocp.CheckpointManager, step: int, state_like: dict) -> dict:
    """One step's state (shaped like `state_like`), leaving the data iterator alone."""
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(state_like)))["state"]
