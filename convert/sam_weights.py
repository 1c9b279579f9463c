"""Convert an official SAM PyTorch checkpoint (or LiteMedSAM's) to a safetensors file of our Flax parameter tree.

    python convert/sam_weights.py --checkpoint sam_vit_b_01ec64.pth --output sam_vit_b.safetensors
    python convert/sam_weights.py --checkpoint lite_medsam.pth --output lite_medsam.safetensors

The checkpoint is read without torch, by a restricted unpickler that refuses any code a pickle asks to run.
"""

import sys

from absl import flags

from sam_jax.config import PRESETS
from sam_jax.errors import SamJaxError
from sam_jax.flags_util import run_app
from sam_jax.weights.convert import convert_checkpoint

flags.DEFINE_string("checkpoint", None, "PyTorch SAM checkpoint (.pth), e.g. sam_vit_b_01ec64.pth.", required=True)
flags.DEFINE_string("output", None, "Where to write the safetensors file.", required=True)
flags.DEFINE_enum(
    "model_type",
    "auto",
    ["auto", *PRESETS],
    "SAM size (lite_medsam: LiteMedSAM's TinyViT); auto detects it from the tensor shapes (the small presets are "
    "for tests and demos).",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    try:
        metadata = convert_checkpoint(FLAGS.checkpoint, FLAGS.output, FLAGS.model_type)
    except SamJaxError as e:
        print(f"error: {e}\nNo output was written.", file=sys.stderr)
        return 1
    print(
        f"wrote {FLAGS.output}: {metadata['model_type']}, {int(metadata['num_parameters']):,} parameters, "
        f"source sha256 {metadata['source_sha256'][:12]}…"
    )
    return 0


if __name__ == "__main__":
    run_app(main, __file__)
