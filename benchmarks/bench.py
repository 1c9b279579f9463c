"""Our jitted LoRA train step against the paper's PyTorch step, side by side: median step time, slices/s, peak memory,
model FLOPs and MFU; encoder inference and whole-volume (155-slice) inference too.

    python -m benchmarks.bench --preset cpu --output results.json # 2 CPU cores: ViT-B 256/512 (+1024 inference), ~5 min
    python -m benchmarks.bench --preset gpu --output results.json # one H100, ViT-B at 1024, < 8 minutes
    python -m benchmarks.bench --preset gpu_quick --output results.json  # benchmarks/gpu_check.py's table, < 5 minutes
    python -m benchmarks.bench --preset smoke --output results.json  # the tiny model at 64², any backend: plumbing

Each group of cases runs in a fresh subprocess, one framework and one image size per group, cases in order of
growing memory, so the process's peak RSS after a case is that case's peak (CPU). On GPU, JAX's figure is the
compiled step's memory (arguments + temporaries + outputs, from XLA's memory analysis) and PyTorch's is
`torch.cuda.max_memory_allocated` reset per case. A failing case (e.g. out of memory) is recorded with its error and
the rest still run; results are written after every group (JSON, and a markdown table beside it), so a time-out
keeps what was done. `--repeat N` runs all groups N times in turn and reports each case's median round: a shared
machine's speed drifts by several per cent over minutes, and the rounds spread that over both frameworks. Both sides
get synthetic batches: JAX the host's 240² slices, resized on the device by the step as in training; PyTorch images
already resized to the model size (the paper's code resizes on the host), so the PyTorch side is spared that work.
ViT-B weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The PyTorch references (the paper's LoRA SAM, the torchvision stand-in) live with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CANVAS = 240  # BraTS slices in the cache
VOLUME_SLICES = 155
CPU_VOLUME_SLICES = 32  # 2 CPU cores take minutes per volume: time 32 slices and report the 155-slice equivalent
# Dense peak FLOP/s by device kind and compute dtype (fp32 matmuls run as TF32 on tensor cores by default).
PEAK_FLOPS = {"H100": {"bfloat16": 989e12, "float32": 494e12}, "H200": {"bfloat16": 989e12, "float32": 494e12}}


def _case(
    framework,
    kind,
    size,
    batch,
    *,
    z=1,
    dtype="float32",
    attention="folded",
    remat=False,
    steps=3,
    volume_slices=VOLUME_SLICES,
    model="vit_b",
):
    """One measurement; `batch` may be a list of candidates tried largest first (the largest that fits wins)."""
    return dict(
        framework=framework,
        kind=kind,
        image_size=size,
        batch=batch,
        z=z,
        dtype=dtype,
        attention=attention if framework == "jax" else "sam",
        remat=remat,
        steps=steps,
        volume_slices=volume_slices,
        model=model,
    )


def cpu_groups():
    jax256 = [
        _case("jax", "train", 256, 1),
        _case("jax", "train", 256, 4),
        _case("jax", "encode", 256, 4),
        _case("jax", "volume", 256, 8, steps=1, volume_slices=CPU_VOLUME_SLICES),
    ]
    torch256 = [
        _case("torch", "train", 256, 1),
        _case("torch", "train", 256, 4),
        _case("torch", "encode", 256, 4),
        _case("torch", "volume", 256, 8, steps=1, volume_slices=CPU_VOLUME_SLICES),
    ]
    plain256 = [_case("jax", "train", 256, 4, attention="plain"), _case("jax", "encode", 256, 4, attention="plain")]
    jax512 = [_case("jax", "train", 512, 1), _case("jax", "encode", 512, 1)]
    torch512 = [_case("torch", "train", 512, 1), _case("torch", "encode", 512, 1)]
    # SAM's own input size, inference only (a 1024² train step takes most of a minute on 2 cores)
    jax1024, torch1024 = [_case("jax", "encode", 1024, 1)], [_case("torch", "encode", 1024, 1)]
    return [
        jax256,
        torch256,
        plain256,
        jax512,
        torch512,
        jax1024,
        torch1024,
        [dict(framework="host", kind="pipeline", batch=4, z=1)],
    ]


def gpu_groups():
    bf16 = dict(dtype="bfloat16", steps=10)
    main = [
        _case("jax", "train", 1024, [32, 16, 8], attention="cudnn", **bf16),
        _case("jax", "volume", 1024, 32, attention="cudnn", dtype="bfloat16", steps=2),
        _case("jax", "encode", 1024, 32, attention="cudnn", **bf16),
    ]
    torch = [
        _case("torch", "train", 1024, 2, steps=5),
        _case("torch", "train", 1024, 4, dtype="bfloat16", steps=5),
        _case("torch", "encode", 1024, 8, steps=5),
        _case("torch", "volume", 1024, 16, dtype="bfloat16", steps=1),
    ]
    levers = [
        _case("jax", "train", 1024, [32, 16], attention="cudnn", remat=True, **bf16),
        _case("jax", "train", 1024, [8, 4], z=4, attention="cudnn", **bf16),
        _case("jax", "train", 1024, [16, 8, 4], attention="folded", remat=True, **bf16),
        _case("jax", "train", 1024, [8, 4, 2], attention="folded", steps=5),
    ]
    return [main, torch, levers, [dict(framework="host", kind="pipeline", batch=32, z=1)]]


def gpu_quick_groups():
    """The GPU configuration in short: encoder inference (bf16, cuDNN) and the LoRA train step (bf16, folded
    attention, remat) at two batch sizes, ViT-B at 1024; PyTorch's bf16 step beside them when it is installed."""
    bf16 = dict(dtype="bfloat16", steps=10)
    ours = [
        _case("jax", "encode", 1024, 32, attention="cudnn", **bf16),
        _case("jax", "train", 1024, 8, attention="folded", remat=True, **bf16),
        _case("jax", "train", 1024, 16, attention="folded", remat=True, **bf16),
    ]
    return [ours, [_case("torch", "train", 1024, 8, dtype="bfloat16", steps=5)]]


def smoke_groups():
    """The tiny model at 64², one step each: every stage of a run (worker, compile, time, annotate, tables) in seconds
    on any backend."""
    tiny = dict(model="tiny", steps=1)
    return [[_case("jax", "train", 64, 2, **tiny), _case("jax", "encode", 64, 2, **tiny)]]


# preset → (its groups, the default --budget_s)
PRESETS = {
    "cpu": (cpu_groups, 570),
    "gpu": (gpu_groups, 400),
    "gpu_quick": (gpu_quick_groups, 300),
    "smoke": (smoke_groups, 120),
}


# ----------------------------------------------------------------------------------------------- measurements


def _synthetic_batch(batch, z, seed=0):
    """Host batch as the pipeline yields it: random 4-channel slices, a disc-shaped tumour, one click inside."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:CANVAS, :CANVAS]
    masks = np.zeros((batch, z, CANVAS, CANVAS), np.uint8)
    coords = np.zeros((batch, z, 1, 2), np.float32)
    for i in range(batch):
        for t in range(z):
            cy, cx, r = rng.integers(60, 180), rng.integers(60, 180), rng.integers(10, 40)
            masks[i, t] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            coords[i, t, 0] = cx, cy
    return {
        "image": rng.normal(size=(batch, z, CANVAS, CANVAS, 4)).astype(np.float32),
        "mask": masks,
        "valid_hw": np.full((batch, 2), CANVAS, np.int32),
        "point_coords": coords,
        "point_labels": np.ones((batch, z, 1), np.int32),
    }


def _timed(fn, steps, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _jax_case(case, batch):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from sam_jax.training.config import TrainConfig
    from sam_jax.training.step import build_train_step, cast_floats, make_eval_forward

    size, z, dtype = case["image_size"], case["z"], jnp.dtype(case["dtype"])
    step_cfg = TrainConfig(
        model_type=case["model"],
        image_size=size,
        attention=case["attention"],
        remat_attention=case["remat"],
        cross_slice=z > 1,
        slices=z,
        loss="bce",
        precision=case["dtype"],
        trainable="lora",
        learning_rate=1e-4,
    )
    train = build_train_step(step_cfg)  # random weights (seed 0), Adam
    graphdef, trainable, frozen = train.graphdef, train.trainable, jax.device_put(train.frozen)
    out = {}
    if case["kind"] == "train":
        state = [jax.device_put(trainable), jax.device_put(train.opt_state)]
        data = jax.device_put(_synthetic_batch(batch, z))
        rng = jax.random.key(0)
        compiled = train.step.lower(state[0], state[1], frozen, data, rng).compile()
        out.update(_compiled_figures(compiled))
        if out.get("compiled_bytes") and jax.devices()[0].platform == "gpu":
            limit = jax.devices()[0].memory_stats().get("bytes_limit", 0)
            if limit and out["compiled_bytes"] > limit:
                raise MemoryError(f"OOM: needs {out['compiled_bytes'] / 2**30:.1f} GiB of {limit / 2**30:.1f}")

        def run():
            state[0], state[1], metrics = compiled(state[0], state[1], frozen, data, rng)
            metrics["loss"].block_until_ready()

        seconds = _timed(run, case["steps"])
        slices = batch * z
    elif case["kind"] == "encode":
        images = jax.device_put(jnp.asarray(jax.random.normal(jax.random.key(1), (batch, size, size, 4)), dtype))
        params = jax.device_put(cast_floats(trainable, dtype))

        @jax.jit
        def encode(params, frozen, images):
            return nnx.merge(graphdef, params, frozen).encode_image(images)

        compiled = encode.lower(params, frozen, images).compile()
        out.update(_compiled_figures(compiled))
        seconds = _timed(lambda: compiled(params, frozen, images).block_until_ready(), case["steps"])
        slices = batch
    else:  # volume: host slices in chunks of `batch`: transfer, resize, encode and decode with one click each
        import numpy as np

        params = jax.device_put(cast_floats(trainable, dtype))
        forward = make_eval_forward(graphdef, step_cfg)
        count = case["volume_slices"]
        volume = _synthetic_batch(count, 1)
        chunks = []
        for start in range(0, count, batch):
            chunk = {k: v[start : start + batch] for k, v in volume.items()}
            pad = batch - len(chunk["image"])
            chunks.append({k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) if pad else v for k, v in chunk.items()})

        def run(chunks=chunks):
            logits = [forward(params, frozen, jax.device_put(c), jax.random.key(0))[0] for c in chunks]
            jax.block_until_ready(logits)

        run(chunks[:1])  # compiles
        seconds = _timed(run, case["steps"], warmup=0)
        slices = count
    out.update(seconds=seconds, slices_per_s=slices / seconds)
    device = jax.devices()[0]
    if device.platform == "gpu":
        out["process_peak_bytes"] = device.memory_stats().get("peak_bytes_in_use")
    return out


def _compiled_figures(compiled):
    figures = {}
    try:
        m = compiled.memory_analysis()
        figures["compiled_bytes"] = (
            m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
        )
    except Exception:  # not every backend reports it
        pass
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        figures["xla_flops"] = float(cost["flops"])
    except Exception:
        pass
    return figures


def _torch_case(case, batch):
    import torch
    from torch_sam_lora import LoRASam, make_train_step

    from sam_jax.config import sam_config

    size = case["image_size"]
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda:
        torch.set_num_threads(2)
    autocast = torch.bfloat16 if case["dtype"] == "bfloat16" else None
    model = LoRASam(sam_config(case["model"], image_size=size)).to(device)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 4, size, size, generator=gen).to(device)
    coords = (torch.rand(batch, 1, 2, generator=gen) * size).to(device)
    labels = torch.ones(batch, 1, device=device)
    target = (torch.rand(batch, 1, size // 4, size // 4, generator=gen) > 0.5).float().to(device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if case["kind"] == "train":
        step = make_train_step(model, autocast_dtype=autocast)
        seconds = _timed(lambda: step(images, coords, labels, target), case["steps"])
        slices = batch
    else:
        count = case["volume_slices"] if case["kind"] == "volume" else batch

        @torch.no_grad()
        def run(count=count):
            with torch.autocast(device, dtype=autocast, enabled=autocast is not None):
                for start in range(0, count, batch):
                    n = min(batch, count - start)
                    if case["kind"] == "encode":
                        model.encode(images[:n])
                    else:  # the paper's resize happens on the host; here the slices arrive already resized
                        model(images[:n], coords[:n], labels[:n])
            sync()

        run(batch)
        seconds = _timed(run, case["steps"], warmup=0 if case["kind"] == "volume" else 1)
        slices = count
    out = dict(seconds=seconds, slices_per_s=slices / seconds)
    if cuda:
        out["peak_bytes"] = torch.cuda.max_memory_allocated()
    return out


def _pipeline_case(case):
    import tempfile

    from benchmarks.data_pipeline import measure
    from sam_jax.data.cache import build_cache
    from sam_jax.data.phantom import write_phantom

    with tempfile.TemporaryDirectory() as scratch:
        write_phantom(Path(scratch) / "phantom", cases_per_domain=1, seed=0)
        cache = build_cache(Path(scratch) / "phantom", Path(scratch) / "cache")
        rate = measure(cache, batch_size=case["batch"], z=case["z"], num_workers=0, num_threads=2, batches=50)
    return dict(slices_per_s=rate * case["z"])


def run_worker(cases_file, lines_file, deadline):
    for case in json.loads(Path(cases_file).read_text()):
        result = dict(case)
        if time.time() > deadline:
            result["error"] = "not run: out of time"
        else:
            candidates = case["batch"] if isinstance(case["batch"], list) else [case["batch"]]
            for batch in candidates:
                result.update(batch=batch)
                result.pop("error", None)
                try:
                    if case["framework"] == "jax":
                        result.update(_jax_case(case, batch))
                    elif case["framework"] == "torch":
                        result.update(_torch_case(case, batch))
                    else:
                        result.update(_pipeline_case(case))
                    break
                except Exception as e:  # an OOM in one case must not stop the others
                    text = f"{type(e).__name__}: {e}"
                    oom = any(s in text for s in ("OOM", "RESOURCE_EXHAUSTED", "out of memory", "Out of memory"))
                    result["error"] = "OOM" if oom else text[:300]
                    if not oom:
                        break
        result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with open(lines_file, "a") as f:
            f.write(json.dumps(result) + "\n")
        print(f"  {_label(result)}: " + (result.get("error") or f"{result['slices_per_s']:.2f} slices/s"), flush=True)


# ------------------------------------------------------------------------------------------------- reporting


def _label(r):
    if r["kind"] == "pipeline":
        return f"host pipeline batch {r['batch']}"
    model = "" if r["model"] == "vit_b" else f" {r['model']}"
    return (
        f"{r['framework']}{model} {r['kind']} {r['image_size']} b{r['batch']}"
        + (f" z{r['z']}" if r["z"] > 1 else "")
        + f" {r['dtype']} {r['attention']}"
        + (" remat" if r["remat"] else "")
    )


def _annotate(results, hardware):
    from benchmarks.flops import encoder_forward_flops, train_step_flops
    from sam_jax.config import sam_config

    peak = next((v for k, v in PEAK_FLOPS.items() if k in hardware), None)
    torch_rate = {}
    for r in results:
        if r["framework"] == "torch" and "slices_per_s" in r:
            key = (r["kind"], r["image_size"], r["dtype"])
            torch_rate[key] = max(torch_rate.get(key, 0), r["slices_per_s"])
    for r in results:
        if "slices_per_s" not in r or r["kind"] == "pipeline":
            continue
        config = sam_config(r["model"], image_size=r["image_size"], in_chans=4)
        z = r["z"] if r["z"] > 1 else 0
        if r["kind"] == "train":
            per_slice = train_step_flops(config, 1, cross_slice_z=z)
        else:
            per_slice = encoder_forward_flops(config)
        r["model_flops_per_step"] = per_slice * r["batch"] * r["z"] if r["kind"] != "volume" else None
        if r["kind"] == "volume":
            r["volume_seconds"] = VOLUME_SLICES / r["slices_per_s"]
        r["model_tflops_per_s"] = per_slice * r["slices_per_s"] / 1e12
        if peak:
            r["mfu"] = per_slice * r["slices_per_s"] / peak[r["dtype"]]
        for dtype in ("float32", "bfloat16"):
            base = torch_rate.get((r["kind"], r["image_size"], dtype))
            if r["framework"] == "jax" and base:
                r[f"x_torch_{dtype}"] = r["slices_per_s"] / base
        memory = r.get("compiled_bytes") if r["framework"] == "jax" and "gpu" in hardware.lower() else None
        memory = memory or r.get("peak_bytes") or r.get("peak_rss_bytes")
        r["peak_memory_gb"] = memory / 1e9
        if r["kind"] == "train":
            r["peak_memory_gb_per_slice"] = r["peak_memory_gb"] / (r["batch"] * r["z"])
    return results


def markdown(report):
    rows = [
        "| case | s/step | slices/s | peak mem GB (per slice) | × torch fp32 | × torch bf16 | model TFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "error" in r or r["kind"] == "pipeline":
            rows.append(f"| {_label(r)} | {r.get('error', '')} | {r.get('slices_per_s', 0):.1f} | | | | | |")
            continue

        def fmt(key, spec, r=r):
            return format(r[key], spec) if r.get(key) is not None else ""

        mem = fmt("peak_memory_gb", ".2f") + (
            f" ({r['peak_memory_gb_per_slice']:.2f})" if "peak_memory_gb_per_slice" in r else ""
        )
        seconds = r.get("volume_seconds", r["seconds"])
        rows.append(
            f"| {_label(r)} | {seconds:.3f} | {r['slices_per_s']:.2f} | {mem} | "
            f"{fmt('x_torch_float32', '.2f')} | {fmt('x_torch_bfloat16', '.2f')} | "
            f"{fmt('model_tflops_per_s', '.3f')} | {fmt('mfu', '.1%')} |"
        )
    head = (
        f"Benchmark `{report['command']}`, {report['date']}, {report['hardware']}. Steps timed after warm-up "
        f"(median; with --repeat, each case's median round); for volume rows the time is for {VOLUME_SLICES} "
        f"slices end to end "
        f"(host slices in, logits out; on CPU extrapolated from {CPU_VOLUME_SLICES}). "
        f"Memory: {report['memory_note']}"
    )
    return head + "\n\n" + "\n".join(rows) + "\n"


def _run_group(group, stem, preset, env, deadline):
    """The group's cases in one fresh worker process; cases it did not finish come back with an error. PyTorch's
    cases are skipped, each with a note, where PyTorch or segment_anything is not installed (a GPU image may lack
    them; JAX's cases need neither)."""
    if group[0]["framework"] == "torch" and not all(importlib.util.find_spec(m) for m in ("torch", "segment_anything")):
        return [dict(c, error="skipped: torch or segment_anything is not installed") for c in group]
    cases_file, lines_file = stem.with_suffix(".cases.json"), stem.with_suffix(".lines.jsonl")
    cases_file.write_text(json.dumps(group))
    lines_file.unlink(missing_ok=True)
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.bench",
                "--preset",
                preset,
                "--worker",
                str(cases_file),
                str(lines_file),
                str(deadline),
            ],
            env=env,
            timeout=max(deadline - time.time() + 60, 1),
        )
    except subprocess.TimeoutExpired:
        print("  group timed out", flush=True)
    done = [json.loads(x) for x in lines_file.read_text().splitlines()] if lines_file.exists() else []
    cases_file.unlink()
    lines_file.unlink(missing_ok=True)
    return done + [dict(c, error="not run: the group crashed or timed out") for c in group[len(done) :]]


def _median_round(rounds):
    """Per case, the round with the median time (the faster middle one for an even count), with every round's rate."""
    merged = []
    for i, first in enumerate(rounds[0]):
        runs = [r[i] for r in rounds if i < len(r)]
        timed = sorted((r for r in runs if "slices_per_s" in r), key=lambda r: r["slices_per_s"], reverse=True)
        if not timed:
            merged.append(first)
            continue
        pick = dict(timed[(len(timed) - 1) // 2])
        pick["slices_per_s_rounds"] = [r.get("slices_per_s") for r in runs]
        merged.append(pick)
    return merged


def _hardware():
    code = "import jax; d = jax.devices()[0]; print(d.platform, getattr(d, 'device_kind', ''), jax.device_count())"
    try:
        text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    except subprocess.TimeoutExpired:
        text = "unknown"
    return f"{text.strip()}; host {_cpu()['model']}, {os.cpu_count()} cores"


# The vector units XLA's and oneDNN's CPU kernels choose between; the CPU comparison differs by them (AMD EPYC vs
# Intel Xeon with AVX-512 and AMX gave different ratios).
_VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def _cpu() -> dict:
    """The host CPU's model and vector extensions, from /proc/cpuinfo where there is one."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "vector_extensions": [f for f in _VECTOR_FLAGS if f in flags]}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("jax", "jaxlib", "flax", "torch", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--output", default="results.json")
    parser.add_argument(
        "--budget_s",
        type=float,
        default=None,
        help="Stop starting cases after this many seconds "
        "(default: " + ", ".join(f"{s} {p}" for p, (_, s) in PRESETS.items()) + ").",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="Run every group this many times, interleaved, and "
        "report each case's median round (a shared machine's speed drifts).",
    )
    parser.add_argument("--worker", nargs=3, metavar=("CASES", "LINES", "DEADLINE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: must be at least 1")
    if args.worker:
        return run_worker(args.worker[0], args.worker[1], float(args.worker[2]))
    start = time.time()
    make_groups, budget_s = PRESETS[args.preset]
    deadline = start + (args.budget_s or budget_s * args.repeat)
    output = Path(args.output)
    hardware = _hardware()
    print(f"hardware: {hardware}", flush=True)
    repeat = f" --repeat {args.repeat}" if args.repeat > 1 else ""
    report = {
        "command": f"python -m benchmarks.bench --preset {args.preset}{repeat} --output {args.output}",
        "date": datetime.date.today().isoformat(),
        "hardware": hardware,
        "cpu": _cpu(),
        "versions": _versions(),
        "results": [],
        "memory_note": "CPU: process peak RSS (imports included); GPU: JAX compiled step memory, "
        "torch max_memory_allocated.",
    }
    root = str(Path(__file__).resolve().parents[1])
    env = dict(
        os.environ,
        XLA_PYTHON_CLIENT_PREALLOCATE="false",
        PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    )
    groups = make_groups()
    rounds = []  # each round runs every group once, so slow spells of a shared machine hit both frameworks
    for r in range(args.repeat):
        rounds.append([])
        for i, group in enumerate(groups):
            print(f"round {r + 1}/{args.repeat}, group {i + 1}/{len(groups)}: {len(group)} cases", flush=True)
            rounds[-1] += _run_group(group, output.with_suffix(f".group{i}"), args.preset, env, deadline)
            report["results"] = _annotate(_median_round(rounds), hardware)
            report["wall_s"] = time.time() - start
            output.write_text(json.dumps(report, indent=1))
            output.with_suffix(".md").write_text(markdown(report))
    print(markdown(report), flush=True)


if __name__ == "__main__":
    main()
