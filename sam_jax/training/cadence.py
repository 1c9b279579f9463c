"""When a run logs, validates and checkpoints: the rules in one place. Step s is the s-th step done (from 1).

- validation: at every `eval_every`-th step, or (eval_every 0, as the paper) at the step where an epoch ends, and at
  the last step; never without a held-out set;
- a log line: every `log_every`-th step and every validated step (its Dice is logged);
- a checkpoint: every `checkpoint_every`-th step, the last step and every validated step (so the best validation
  checkpoint can be kept).
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Cadence:
    total_steps: int
    batch_size: int
    slices_per_epoch: int  # what one epoch visits: selected slices, or cases with --volume_batch
    log_every: int
    checkpoint_every: int
    eval_every: int  # 0: at each epoch's end
    validation: bool  # whether there is a held-out set

    @classmethod
    def of(cls, cfg, slices_per_epoch: int, validation: bool) -> "Cadence":
        """The cadence of a run (`cfg`: its `TrainConfig`); `--steps`, when > 0, overrides `--epochs`."""
        total = cfg.steps if cfg.steps > 0 else math.ceil(cfg.epochs * slices_per_epoch / cfg.batch_size)
        return cls(
            total_steps=total,
            batch_size=cfg.batch_size,
            slices_per_epoch=slices_per_epoch,
            log_every=cfg.log_every,
            checkpoint_every=cfg.checkpoint_every,
            eval_every=cfg.eval_every,
            validation=validation,
        )

    def epoch(self, step: int) -> float:
        """Epochs done after `step` steps; batches run across epoch ends, so it has a fraction."""
        return step * self.batch_size / self.slices_per_epoch

    def _whole_epochs(self, step: int) -> int:
        return step * self.batch_size // self.slices_per_epoch

    def validates(self, step: int) -> bool:
        if not self.validation:
            return False
        if step == self.total_steps:
            return True
        if self.eval_every:
            return step % self.eval_every == 0
        return self._whole_epochs(step) > self._whole_epochs(step - 1)

    def logs(self, step: int) -> bool:
        return step % self.log_every == 0 or self.validates(step)

    def checkpoints(self, step: int) -> bool:
        return step % self.checkpoint_every == 0 or step == self.total_steps or self.validates(step)
