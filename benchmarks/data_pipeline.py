"""Pipeline throughput from the cache, in samples (slice stacks) per second, after a warm-up that brings the cache
into the page cache. Without --data_dir it writes and caches a small phantom in a temporary directory first.

    python benchmarks/data_pipeline.py [--data_dir DIR] [--cache_dir DIR] [--batch_size 32] [--z 1]
        [--num_workers 0] [--num_threads 2] [--batches 400]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sam_jax.data.cache import build_cache
from sam_jax.data.phantom import write_phantom
from sam_jax.data.pipeline import make_dataset, make_iterator


def measure(
    cache, *, batch_size: int, z: int, num_workers: int, num_threads: int, batches: int, slice_policy: str = "all"
) -> float:
    """Samples per second over `batches` batches after `batches // 5` warm-up batches."""
    dataset = make_dataset(cache, cache.case_ids, z=z, batch_size=batch_size, slice_policy=slice_policy, seed=0)
    iterator = make_iterator(dataset, num_workers=num_workers, num_threads=num_threads)
    for _ in range(max(batches // 5, 2)):
        next(iterator)
    start = time.perf_counter()
    samples = sum(len(next(iterator)["case_index"]) for _ in range(batches))
    return samples / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir")
    parser.add_argument("--cache_dir")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--z", type=int, default=1)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--slice_policy", default="all")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = Path(scratch) / "phantom"
            write_phantom(data_dir, cases_per_domain=1, seed=0)
        cache = build_cache(data_dir, args.cache_dir or Path(scratch) / "cache")
        rate = measure(
            cache,
            batch_size=args.batch_size,
            z=args.z,
            num_workers=args.num_workers,
            num_threads=args.num_threads,
            batches=args.batches,
            slice_policy=args.slice_policy,
        )
    print(
        f"{rate:.0f} samples/s (batch {args.batch_size}, z {args.z}, {args.num_workers} workers, "
        f"{args.num_threads} threads, {cache.canvas_size}x{cache.canvas_size}x4 float32 per slice)"
    )


if __name__ == "__main__":
    main()
