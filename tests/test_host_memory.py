"""Freed host memory kept for reuse (sam_jax.host_memory): the kernel's own count of page faults says whether a freed
block came back without faulting in again, in a process started as every command starts."""

import platform
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 64 << 20  # twice glibc's largest mmap threshold: by default mapped afresh at each allocation
PAGES = BLOCK // resource.getpagesize()

# Allocates, fills and frees a BLOCK with the C library's own malloc three times after a first use; prints the page
# faults per round. The block is kept to small pages (NumPy's arrays ask for huge ones, as may a system's default),
# one fault each, so that the count tells.
SCRIPT = f"""
import ctypes
import resource

def main(argv):
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def use_block():
        block = libc.malloc({BLOCK})
        page = resource.getpagesize()
        libc.madvise(ctypes.c_void_p(-(-block // page) * page), {BLOCK} - page, 15)  # MADV_NOHUGEPAGE
        ctypes.memset(block, 1, {BLOCK})
        libc.free(block)

    use_block()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        use_block()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc is what is set")


def _faults_per_round(tmp_path, start: str) -> int:
    script = tmp_path / "blocks.py"
    script.write_text(SCRIPT + start)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True, cwd=ROOT)
    return int(out.stdout.split()[-1])


@glibc_only
def test_a_command_reuses_freed_blocks_without_page_faults(tmp_path):
    default = _faults_per_round(tmp_path, "main(None)\n")
    as_a_command = _faults_per_round(tmp_path, "from sam_jax.flags_util import run_app\nrun_app(main, __file__)\n")
    assert default >= 0.9 * PAGES  # the premise: each round faults the whole block in again
    assert as_a_command < 0.05 * PAGES


def test_every_command_starts_through_run_app():
    apps = [p for d in ("convert", "train", "eval") for p in sorted((ROOT / d).glob("*.py"))]
    commands = [p for p in apps if 'if __name__ == "__main__":' in p.read_text()]
    assert len(commands) >= 10
    assert [p.name for p in commands if "run_app(main, __file__)" not in p.read_text()] == []
