"""PyTorch SAM checkpoint (`.pth`: SAM's, LiteMedSAM's) → our safetensors file, with no torch and no pickle code
executed."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from sam_jax.config import sam_config
from sam_jax.hashing import file_sha256
from sam_jax.outputs import check_output_file
from sam_jax.weights.io import save_arrays
from sam_jax.weights.params import WeightsError, detect_model_type, model_shapes, torch_to_flax
from sam_jax.weights.torch_checkpoint import read_torch_checkpoint


def convert_checkpoint(checkpoint, output, model_type: str = "auto") -> Dict[str, str]:
    """Convert and write `output` atomically; returns the metadata written. Raises WeightsError, or OutputError
    before reading anything when `output` cannot be written (the converted file is about the checkpoint's size)."""
    if not Path(checkpoint).is_file():
        raise WeightsError(f"{checkpoint}: no such file")
    output = check_output_file(output, "--output", inputs=[checkpoint], needed=Path(checkpoint).stat().st_size)
    state_dict = read_torch_checkpoint(checkpoint)
    detected = detect_model_type(state_dict)
    if model_type not in ("auto", detected):
        raise WeightsError(
            f"{checkpoint}: --model_type={model_type} was asked for, but the tensors are those of {detected}"
        )
    config = sam_config(detected)
    arrays = torch_to_flax(state_dict, model_shapes(config))
    metadata = {
        "model_type": detected,
        "image_size": str(config.image_size),
        **config.encoder_identity(),
        "source_file": Path(checkpoint).name,
        "source_sha256": file_sha256(checkpoint),
        "num_parameters": str(sum(int(np.prod(a.shape)) for a in arrays.values())),
    }
    save_arrays(output, arrays, metadata)
    return metadata
