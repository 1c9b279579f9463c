"""Resumable checkpoints with orbax: trainable parameters, optimiser state, step, RNG and the data iterator.

Saves are asynchronous and atomic (orbax finalises a step directory only once it is complete), so a run killed at
any moment resumes from its last finished checkpoint. The latest `keep` steps are kept, plus the best one by
validation Dice (every validation pass is checkpointed with its score).
"""

from __future__ import annotations

from pathlib import Path

import grain
import orbax.checkpoint as ocp

BEST_METRIC = "val_dice"


def manager(workdir, keep: int) -> ocp.CheckpointManager:
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=keep),
        ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                                      keep_checkpoints_without_metrics=False),
    ])
    # best_fn is what makes orbax write a step's metrics at all (without it BestN has nothing to rank).
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=lambda m: m[BEST_METRIC],
                                           best_mode="max", create=True)
    return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options,
                                 item_names=("state", "data"))


def save(mngr: ocp.CheckpointManager, step: int, state: dict, data_iterator, metrics: dict | None = None) -> None:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            data=grain.checkpoint.CheckpointSave(data_iterator)),
              metrics=metrics, force=True)


def restore_latest(mngr: ocp.CheckpointManager, state_like: dict, data_iterator):
    """The latest checkpoint's state (shaped like `state_like`), with the iterator rewound in place; or None."""
    step = mngr.latest_step()
    if step is None:
        return None
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state_like), data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored["state"]


def best_step(mngr: ocp.CheckpointManager) -> int | None:
    """The kept step with the highest validation Dice, or None if no checkpoint carries one."""
    scored = [(m[BEST_METRIC], s) for s in mngr.all_steps()
              if (m := mngr.metrics(s)) and m.get(BEST_METRIC) is not None]
    return max(scored, key=lambda t: (t[0], -t[1]))[1] if scored else None  # ties: the earliest


def restore_state(mngr: ocp.CheckpointManager, step: int, state_like: dict) -> dict:
    """One step's state (shaped like `state_like`), leaving the data iterator alone."""
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(state_like)))["state"]
