"""The project's commands run as a user runs them: `python -m train.main …` (or a script path) in a process of its
own, with the checkout importable and the test session's XLA compilation cache (conftest.py), so that each tiny model
compiles once for the whole session. The process is forked from one that has imported the library already
(fork_server.py), unless `fresh`: a test of the process itself (its pid, its session, its start-up) needs `python`'s
own."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WITHOUT_TORCH = Path(__file__).resolve().parent / "without_torch"
FORK_SERVER = Path(__file__).resolve().parent / "fork_server.py"


def app_env(**changes: str) -> dict[str, str]:
    """The environment a command runs in: this one, the checkout first on PYTHONPATH and torch hidden (as where it
    is not installed: tests/without_torch), then `changes`."""
    path = os.pathsep.join(filter(None, [str(ROOT), str(WITHOUT_TORCH), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **changes}


def xla_flags(*flags: str) -> str:
    """XLA_FLAGS for a command: the session's (conftest.py sets some) and `flags`."""
    return " ".join(filter(None, [os.environ.get("XLA_FLAGS"), *flags]))


# XLA's CPU compiler set to compile fast (conftest.py sets these for the session where JAX has no accelerator): no
# LLVM optimisation (about half of a tiny program's compile time, saving less than it costs), and fusions emitted as
# LLVM IR directly instead of through XLA's MLIR fusion emitters, which build an MLIR pipeline for each fusion (a tiny
# training run compiled in 4.9 s of CPU instead of 12.6 s).
FAST_COMPILE = {"xla_backend_optimization_level": "0", "xla_cpu_use_fusion_emitters": "false"}
# The same flags at XLA's defaults (optimised.optimised_jit compiles with these).
XLA_DEFAULTS = {"xla_backend_optimization_level": 2, "xla_cpu_use_fusion_emitters": True}


def optimised_env() -> dict[str, str]:
    """app_env with XLA's CPU compiler back at its defaults, for commands whose time goes into running a model rather
    than compiling it (LiteMedSAM's 256² encoder: unoptimised, its evaluation takes 2–3× as long)."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    kept = [f for f in flags if f.split("=")[0].removeprefix("--") not in FAST_COMPILE]
    return app_env(XLA_FLAGS=" ".join(kept))


def command(*args, fresh=False) -> list[str]:
    """`python ARGS` with this interpreter, forked from the fork server unless `fresh`; a script path such as
    `convert/sam_weights.py` is taken from the checkout."""
    args = [str(a) for a in args]
    if args and args[0] != "-m" and not Path(args[0]).is_absolute() and (ROOT / args[0]).is_file():
        args[0] = str(ROOT / args[0])
    return [sys.executable, *args] if fresh else [sys.executable, "-S", str(FORK_SERVER), "run", *args]


def run_app(*args, cwd=ROOT, env=None, timeout=600, fresh=False) -> subprocess.CompletedProcess:
    """Run `python ARGS` to its end; its output is captured as text."""
    return subprocess.run(
        command(*args, fresh=fresh), cwd=cwd, env=env or app_env(), capture_output=True, text=True, timeout=timeout
    )


def start_app(*args, cwd=ROOT, env=None, fresh=False, **popen) -> subprocess.Popen:
    """Start `python ARGS` and return at once (servers, runs to be killed, processes of one distributed run)."""
    return subprocess.Popen(command(*args, fresh=fresh), cwd=cwd, env=env or app_env(), **popen)


def config_flags(cfg, **changes) -> list[str]:
    """A config's settings as the command-line flags that rebuild it (the workdir left for the caller)."""
    values = json.loads(cfg.replace(**changes).to_json())
    names = {f.name for f in dataclasses.fields(cfg) if f.metadata.get("flag", True)} - {"workdir"}
    return [f"--{k}={','.join(v) if isinstance(v, list) else v}" for k, v in values.items() if k in names]
