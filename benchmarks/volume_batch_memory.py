"""How many slices of one volume a paper-code step (`--volume_batch K`: ViT-B, 1024², fp32, LoRA, the loss at the
input grid) can hold on a GPU of a given memory, from XLA's memory analysis of the compiled step: arguments
(frozen base, LoRA, optimiser state, batch) + temporaries + outputs − donated buffers. The step is compiled, never
run, so this runs on a CPU; the CPU compiler's buffer assignment stands in for the GPU's (same program, other
fusions and attention kernel), so treat the answer as an estimate and keep a margin.

    python benchmarks/volume_batch_memory.py [--sizes 1,2,4] [--gpu_gib 48] [--output results.json]

Memory is affine in K (a fixed part plus activations per slice); the script fits the line to the compiled sizes,
shows how well it fits, and solves for the largest K under 90% of the GPU's memory (the rest for the runtime)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench import _compiled_figures, _synthetic_batch  # noqa: E402


def compiled_bytes(k: int) -> int:
    import jax

    from sam_jax.training.config import TrainConfig
    from sam_jax.training.step import build_train_step

    cfg = TrainConfig(
        model_type="vit_b",
        image_size=1024,
        loss="bce",
        loss_grid="input",
        resize="stretch",
        volume_batch=k,
        broadcast_clicks=True,
        precision="float32",
        trainable="lora",
        learning_rate=1e-4,
    )
    train = build_train_step(cfg)  # random weights (seed 0), Adam
    lowered = train.step.lower(
        train.trainable, train.opt_state, train.frozen, _synthetic_batch(k, 1), jax.random.key(0)
    )
    return _compiled_figures(lowered.compile())["compiled_bytes"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,2,4", help="volume batches K to compile")
    parser.add_argument("--gpu_gib", type=float, default=48.0)
    parser.add_argument("--output", help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    sizes = [int(k) for k in args.sizes.split(",")]
    measured = {}
    for k in sizes:
        tick = time.perf_counter()
        measured[k] = compiled_bytes(k)
        print(
            f"K={k}: {measured[k] / 2**30:.2f} GiB compiled step ({time.perf_counter() - tick:.0f} s to compile)",
            flush=True,
        )
    per_slice, fixed = np.polyfit(sizes, [measured[k] for k in sizes], 1)
    worst = max(abs(fixed + per_slice * k - measured[k]) / measured[k] for k in sizes)
    budget = 0.9 * args.gpu_gib * 2**30
    largest = int((budget - fixed) // per_slice)
    print(
        f"fit: {fixed / 2**30:.2f} GiB fixed + {per_slice / 2**30:.3f} GiB per slice (worst misfit {100 * worst:.1f}%)"
    )
    print(f"largest volume batch within 90% of {args.gpu_gib:g} GiB: K = {largest}")
    if args.output:
        Path(args.output).write_text(
            json.dumps(
                dict(
                    command=" ".join(["python benchmarks/volume_batch_memory.py", *(argv or sys.argv[1:])]),
                    compiled_bytes=measured,
                    fixed_bytes=fixed,
                    bytes_per_slice=per_slice,
                    worst_misfit=worst,
                    gpu_gib=args.gpu_gib,
                    largest_volume_batch=largest,
                ),
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
