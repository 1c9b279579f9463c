"""Everything a training run is: the run spec (the model and its inputs, `sam_jax.spec.RunSpec`) extended by the
data, optimisation and bookkeeping options. One frozen dataclass, validated at construction, saved as JSON in the
workdir and turned into absl flags.

Paper defaults (Diana-Albelda et al. 2024; docs/reference.md §4) are one flagfile away
(`train/adult.flags`): ViT-B, 1024 input, Adam lr 1e-4 constant, LoRA rank 4 alpha 1 on q, v, lin1, lin2, 25 epochs,
batch 1, four channels, BCE, fp32. Our own defaults differ where documented in the field's help.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal, Tuple

from sam_jax import settings
from sam_jax.data.clicks import CLICK_POLICIES
from sam_jax.data.domains import DOMAINS, PAPER_DOMAINS, domain_help
from sam_jax.data.pipeline import SLICE_POLICIES
from sam_jax.data.preprocess import TRAINING_NORMALISATIONS
from sam_jax.distributed import ProcessGroup
from sam_jax.settings import setting
from sam_jax.spec import RunSpec
from sam_jax.training.losses import LOSSES

# Presets that freeze the patch embedding: a new (non-RGB) one must come trained from a parent adapter.
_FROZEN_PATCH_EMBED = ("lora_frozen_patch", "decoder_only", "none")


@dataclasses.dataclass(frozen=True)
class TrainConfig(RunSpec, ProcessGroup):
    # data
    data_dir: str = setting("", "Folder of BraTS cases (searched recursively).")
    phantom_cases_per_domain: int = setting(
        0,
        "If > 0 and data_dir has no cases, write this many phantom cases per domain into data_dir first.",
        at_least=0,
        resume="may_change",
    )
    cache_dir: str = setting(
        "",
        "Root of the preprocessing caches (one folder per preprocessing; `python -m sam_jax.data.caches` lists them); "
        "default <data_dir>/.sam_jax_cache, or under ~/.cache/sam_jax when data_dir is read-only.",
        resume="may_change",
    )
    domain: Literal[(*DOMAINS, "ALL")] = setting("GLI", f"Domain to train on: {domain_help()}; ALL: every domain.")
    eval_domains: Tuple[Literal[tuple(DOMAINS)], ...] = setting(
        PAPER_DOMAINS,
        "Domains scored at the end: the training domain on its validation split, the others on all their cases.",
        resume="may_change",
    )
    slice_policy: Literal[SLICE_POLICIES] = setting(
        "tumour_plus", "Training slices; tumour_plus: the tumour slices and a fraction (empty_fraction) of the others."
    )
    empty_fraction: float = setting(0.1, "Fraction of tumour-free slices kept by tumour_plus.")
    click_policy: Literal[CLICK_POLICIES] = setting(
        "negative_on_empty",
        "Click on tumour-free slices: paper (a random point labelled positive), "
        "negative_on_empty (a background click in the brain), skip_empty (none).",
    )
    skip_bad_cases: bool = setting(False, "Log and skip unreadable or inconsistent cases instead of stopping.")
    cache_workers: int = setting(
        0,
        "Processes building the preprocessing cache (0: one per available CPU; 1: in this process).",
        at_least=0,
        resume="may_change",
    )
    num_workers: int = setting(
        0, "grain worker processes (0: threads in this process).", at_least=0, resume="may_change"
    )
    init_adapter: str = setting("", "Start from this adapter file (e.g. step 1 of the two-step ablation).")
    # optimisation
    batch_size: int = setting(
        1,
        "Samples (slice stacks) per step, over all devices of all processes (the global "
        "batch; each process loads its equal share).",
        at_least=1,
    )
    volume_batch: int = setting(
        0,
        "Original code: each step is one case's K slices, a random one and the others "
        "spaced 10 apart (its SelectEquiSlices; K=4), one Adam step per volume; an epoch "
        "visits every case once. 0: batches of --batch_size slice stacks.",
        at_least=0,
    )
    epochs: float = setting(
        25.0,
        "Epochs over the training slices: one epoch visits every selected slice once (ignored when steps > 0).",
        resume="may_change",
    )
    steps: int = setting(0, "Total steps; > 0 overrides epochs.", at_least=0, resume="may_change")
    learning_rate: float = setting(1e-4, "Peak learning rate (Adam).")
    schedule: Literal["constant", "cosine"] = setting(
        "constant", "Learning-rate schedule: constant (paper) or cosine (after warmup_steps of linear warm-up)."
    )
    warmup_steps: int = setting(0, "Linear warm-up steps for the cosine schedule.", at_least=0)
    weight_decay: float = setting(0.0, "AdamW weight decay (0: Adam, the paper).")
    loss: Literal[LOSSES] = setting("bce", "Training loss; bce is the paper's.")
    loss_grid: Literal["low_res", "input"] = setting(
        "low_res",
        "Where the loss is taken: low_res (the decoder's grid, against the mask resized there) or input "
        "(the original code: logits upsampled ×4 nearest, against the mask resized bilinearly to the "
        "input size).",
    )
    multimask: bool = setting(False, "SAM's ambiguity rule: three masks, only the best is penalised.")
    prompt_rounds: int = setting(1, "Click rounds per sample; > 1 adds clicks in the model's own errors.", at_least=1)
    precision: Literal["float32", "bfloat16"] = setting(
        "float32", "Compute dtype: float32 (paper) or bfloat16 (frozen base stored in bf16)."
    )
    # bookkeeping
    workdir: str = setting("workdir", "Checkpoints, metrics.jsonl, config.json, adapter.safetensors.")
    checkpoint_every: int = setting(500, "Steps between checkpoints.", at_least=1, resume="may_change")
    keep_checkpoints: int = setting(
        2, "Latest checkpoints kept (the best by validation Dice is kept too).", at_least=1, resume="may_change"
    )
    eval_every: int = setting(
        0,
        "Steps between validation passes (0: once per epoch, as the paper). Each pass is "
        "checkpointed with its Dice; the best becomes adapter_best.safetensors.",
        at_least=0,
        resume="may_change",
    )
    val_slices: int = setting(
        0,
        "Slices per validation pass (0: the whole held-out split, as the paper; a budget for big runs).",
        at_least=0,
        resume="may_change",
    )
    log_every: int = setting(10, "Steps between metric lines in metrics.jsonl.", at_least=1, resume="may_change")

    def problems(self) -> list[str]:
        problems = super().problems() + ProcessGroup.problems(self) + settings.problems(self, TrainConfig)
        if self.steps == 0 and not (isinstance(self.epochs, (int, float)) and 0 < self.epochs < math.inf):
            problems.append(f"nothing to train: steps 0 and epochs {self.epochs!r} (need epochs > 0 or steps > 0)")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < math.inf):
            problems.append(f"learning_rate {self.learning_rate!r}: expected a finite number > 0")
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf):
            problems.append(f"weight_decay {self.weight_decay!r}: expected a finite number ≥ 0")
        if not (isinstance(self.empty_fraction, (int, float)) and 0 <= self.empty_fraction <= 1):
            problems.append(f"empty_fraction {self.empty_fraction!r}: expected a fraction in [0, 1]")
        if self.schedule == "cosine" and 0 < self.steps <= self.warmup_steps:
            problems.append(f"warmup_steps {self.warmup_steps} ≥ steps {self.steps}: the run would end warming up")
        if self.volume_batch and self.batch_size != 1:
            problems.append(
                f"volume_batch {self.volume_batch} makes each step one case: batch_size must be 1, not "
                f"{self.batch_size}"
            )
        if self.volume_batch and self.slices != 1:
            problems.append(
                f"volume_batch {self.volume_batch} takes single slices: slices must be 1, not {self.slices}"
            )
        if self.normalisation not in TRAINING_NORMALISATIONS:
            problems.append(
                f"normalisation {self.normalisation} is zero-shot SAM's input; train with "
                f"{', '.join(TRAINING_NORMALISATIONS)}"
            )
        if len(self.modalities) != 3 and self.trainable in _FROZEN_PATCH_EMBED and not self.init_adapter:
            problems.append(
                f"{len(self.modalities)} input channels need a trained patch embedding, but trainable "
                f"{self.trainable} freezes a new random one; train it first (trainable "
                f"patch_embed_only) and pass init_adapter"
            )
        return problems

    def with_absolute_paths(self) -> "TrainConfig":
        """Paths made absolute and the base weights' identity filled in, so the saved config rebuilds the run from
        any working directory."""
        absolute = lambda p: str(Path(p).expanduser().absolute()) if p else p  # noqa: E731
        return self.with_base_identity().replace(
            **{name: absolute(getattr(self, name)) for name in ("data_dir", "cache_dir", "init_adapter", "workdir")}
        )

    def spec(self) -> RunSpec:
        """The run spec part: what an adapter of this run carries."""
        return RunSpec.from_dict(self.to_dict())
