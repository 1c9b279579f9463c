"""Everything a training run is: one frozen dataclass, saved as JSON in the workdir and turned into absl flags.

Paper defaults (Diana-Albelda et al. 2024; docs/reference.md §4) are one flagfile away
(`train/adult.flags`): ViT-B, 1024 input, Adam lr 1e-4 constant, LoRA rank 4 alpha 1 on q, v, lin1, lin2, 25 epochs,
batch 1, four channels, BCE, fp32. Our own defaults differ where documented in the field's help.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Tuple


def _field(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # data
    data_dir: str = _field("", "Folder of BraTS cases (searched recursively). Empty with --phantom: generated.")
    phantom_cases_per_domain: int = _field(0, "If > 0 and data_dir has no cases, write this many phantom cases "
                                              "per domain into data_dir first.")
    cache_dir: str = _field("", "Preprocessing cache; default <data_dir>/.sam_jax_cache.")
    domain: str = _field("GLI", "Domain to train on: GLI, MEN, PED, SSA, or ALL.")
    eval_domains: Tuple[str, ...] = _field(("GLI", "MEN", "PED", "SSA"), "Domains scored at the end: the training "
                                           "domain on its validation split, the others on all their cases.")
    normalisation: str = _field("zscore", "Per-modality intensity normalisation: zscore, or none (the paper).")
    crop_to_brain: bool = _field(False, "Crop volumes to the brain's bounding box (the paper does).")
    slice_policy: str = _field("tumour_plus", "Training slices: all, tumour, tumour_plus (tumour + a fraction of "
                                              "empty slices).")
    empty_fraction: float = _field(0.1, "Fraction of tumour-free slices kept by tumour_plus.")
    click_policy: str = _field("negative_on_empty", "Click on empty slices: paper (random 'positive'), "
                                                     "negative_on_empty, skip_empty.")
    skip_bad_cases: bool = _field(False, "Log and skip unreadable or inconsistent cases instead of stopping.")
    num_workers: int = _field(0, "grain worker processes (0: threads in this process).")
    # model
    model_type: str = _field("vit_b", "vit_b, vit_l, vit_h, or a small preset (tiny, demo).")
    image_size: int = _field(1024, "Model input size; SAM's weights are resized to it.")
    sam_weights: str = _field("", "Converted SAM weights (convert/sam_weights.py). Empty: random init, loudly.")
    modalities: str = _field("all4", "Input channels: a preset (all4, t1n_x3, t1c_x3, t2w_x3, t2f_x3, t1n_t2w_t2f) "
                                     "or a comma list of t1n,t1c,t2w,t2f.")
    patch_embed_init: str = _field("random", "New patch embedding for != 3 channels: random (paper) or rgb_mean.")
    trainable: str = _field("lora", "Trainable preset: lora, patch_embed_only, lora_frozen_patch, full, "
                                    "decoder_only, none.")
    lora_rank: int = _field(4, "LoRA rank (0: none).")
    lora_alpha: float = _field(1.0, "LoRA alpha; the update is scaled by alpha/rank.")
    lora_targets: Tuple[str, ...] = _field(("q", "v", "lin1", "lin2"), "LoRA targets among q, k, v, proj, lin1, lin2.")
    cross_slice: bool = _field(False, "Cross-slice attention in every encoder block (needs slices > 1 to act).")
    slices: int = _field(1, "Z: contiguous slices per sample.")
    init_adapter: str = _field("", "Start from this adapter file (e.g. step 1 of the two-step ablation).")
    # optimisation
    batch_size: int = _field(1, "Samples (slice stacks) per step, over all devices.")
    epochs: float = _field(25.0, "Epochs over the training slices: one epoch visits every selected slice once "
                                 "(ignored when steps > 0).")
    steps: int = _field(0, "Total steps; > 0 overrides epochs.")
    learning_rate: float = _field(1e-4, "Peak learning rate (Adam).")
    schedule: str = _field("constant", "constant (paper) or cosine (with warm-up).")
    warmup_steps: int = _field(0, "Linear warm-up steps for the cosine schedule.")
    weight_decay: float = _field(0.0, "AdamW weight decay (0: Adam, the paper).")
    loss: str = _field("bce", "bce (paper), dice, bce_dice, focal.")
    multimask: bool = _field(False, "SAM's ambiguity rule: three masks, only the best is penalised.")
    prompt_rounds: int = _field(1, "Click rounds per sample; > 1 adds clicks in the model's own errors.")
    precision: str = _field("float32", "Compute dtype: float32 (paper) or bfloat16 (frozen base stored in bf16).")
    attention: str = _field("folded", "Attention kernel: plain (bias added to the logits, as SAM), folded (the "
                                      "bias folded into longer q/k vectors; same maths, faster on CPU), cudnn "
                                      "(folded through cuDNN flash attention; GPU with bfloat16).")
    remat_attention: bool = _field(False, "Recompute attention probabilities in the backward pass (less memory).")
    seed: int = _field(0, "Seed for initialisation, data order and clicks.")
    # bookkeeping
    workdir: str = _field("workdir", "Checkpoints, metrics.jsonl, config.json, adapter.safetensors.")
    checkpoint_every: int = _field(500, "Steps between checkpoints.")
    keep_checkpoints: int = _field(2, "Latest checkpoints kept (the best by validation Dice is kept too).")
    eval_every: int = _field(0, "Steps between validation passes (0: once per epoch, as the paper). Each pass is "
                                "checkpointed with its Dice; the best becomes adapter_best.safetensors.")
    val_slices: int = _field(0, "Slices per validation pass (0: the whole held-out split, as the paper; a budget "
                                "for big runs).")
    log_every: int = _field(10, "Steps between metric lines in metrics.jsonl.")
    distributed: bool = _field(False, "Call jax.distributed.initialize() for multi-host training.")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        raw = json.loads(text)
        known = {f.name: f for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known})

    @classmethod
    def load(cls, workdir) -> "TrainConfig":
        return cls.from_json((Path(workdir) / "config.json").read_text())

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def with_absolute_paths(self) -> "TrainConfig":
        """Paths made absolute, so the saved config rebuilds the run from any working directory."""
        absolute = lambda p: str(Path(p).expanduser().absolute()) if p else p  # noqa: E731
        return self.replace(**{name: absolute(getattr(self, name)) for name in
                               ("data_dir", "cache_dir", "sam_weights", "init_adapter", "workdir")})

    def adaptation(self):
        """The AdaptationConfig these flags describe."""
        from sam_jax.adaptation import AdaptationConfig

        return AdaptationConfig(modalities=self.modalities, patch_embed_init=self.patch_embed_init,
                                lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, lora_targets=self.lora_targets,
                                cross_slice=self.cross_slice, trainable=self.trainable)

    def sam_config(self):
        """SAM's 3-channel config at this run's input size, with its attention kernel."""
        from sam_jax.config import sam_config

        return sam_config(self.model_type, image_size=self.image_size, attention=self.attention,
                          remat_attention=self.remat_attention)

    def base_sha256(self) -> str:
        """Identity of the base weights an adapter of this run is tied to."""
        from sam_jax.adaptation import base_weights_sha256

        return base_weights_sha256(self.sam_weights) if self.sam_weights else f"random-init-seed-{self.seed}"
