"""Several processes as one run, on JAX's distributed runtime: joining the group, which process writes, global
arrays built from process-local data and read back on every process, and stopping every process when one fails.

Start-up: `jax.distributed.initialize` finds the group itself on SLURM (one task per node or per GPU) and from
JAX's `JAX_COORDINATOR_ADDRESS`; `--coordinator_address --num_processes --process_id` name it explicitly. Then every
process posts its --num_processes and settings on the coordination service and all compare them: processes started
differently stop together, naming each difference. Every
process must see the same data_dir, cache and workdir (a shared filesystem): process 0 alone writes what is written
once, orbax writes one checkpoint together.

A failure: the process that fails prints its error naming itself and leaves at once, without JAX's shutdown barrier
(which would wait for peers stuck in a collective); a peer waiting on it sees its collective fail, or, silent peers,
JAX's coordination service declares them dead after `heartbeat_timeout_seconds` and stops every process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from sam_jax import locks, settings
from sam_jax.errors import SamJaxError
from sam_jax.settings import setting


class DistributedError(SamJaxError, RuntimeError):
    """A process group that cannot form or a layout that cannot split the batch."""


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """The settings that make one run of several processes (shared by training and evaluation)."""

    distributed: bool = setting(
        False,
        "Run as one of several processes on JAX's distributed runtime (one per "
        "host or per GPU): found by SLURM or JAX_COORDINATOR_ADDRESS, or named by "
        "coordinator_address, num_processes, process_id. See README 'Scaling out'.",
    )
    coordinator_address: str = setting(
        "",
        "host:port of process 0's coordination service (with --distributed; empty: SLURM or JAX_COORDINATOR_ADDRESS).",
    )
    num_processes: int = setting(0, "Processes in the run (with --distributed; 0: from the cluster).")
    process_id: int = setting(
        -1, "This process's index in [0, num_processes) (with --distributed; -1: from the cluster)."
    )
    join_timeout_seconds: int = setting(
        300, "With --distributed: how long a process waits for every process of the run to join.", at_least=1
    )
    heartbeat_timeout_seconds: int = setting(
        100,
        "With --distributed: a process silent this long is declared dead "
        "and every process stops (JAX's coordination service).",
        at_least=1,
    )

    def problems(self) -> list[str]:
        problems = settings.problems(self, ProcessGroup)
        named = [bool(self.coordinator_address), self.num_processes > 0, self.process_id >= 0]
        if any(named) and not self.distributed:
            problems.append("coordinator_address, num_processes and process_id need --distributed")
        if any(named[1:]) and not all(named[1:]):
            problems.append(
                f"num_processes {self.num_processes} and process_id {self.process_id}: give both or neither"
            )
        if self.num_processes > 0 and not 0 <= self.process_id < self.num_processes:
            problems.append(f"process_id {self.process_id}: expected an integer in [0, {self.num_processes})")
        return problems


def initialize(group: ProcessGroup) -> None:
    """Join the group (a no-op without --distributed). Errors name what was missing."""
    if not group.distributed:
        return
    if problems := group.problems():
        raise DistributedError("cannot join the distributed run:\n  - " + "\n  - ".join(problems))
    address = group.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    if group.process_id == 0 and group.coordinator_address:
        _check_port_free(group.coordinator_address)
    if group.process_id >= 0 and address:
        _hold_process_id(address, group.process_id)
    me = f"process {group.process_id} of {group.num_processes}" if group.process_id >= 0 else "this process"
    at = f" at {address}" if address else ""
    logging.info("%s: joining the run%s (waiting up to %d s for every process)", me, at, group.join_timeout_seconds)

    def give_up():  # past its own timeout JAX ends the process with a C++ abort: this says why, a little before
        print(  # not `_say`: asking JAX which process this is would wait on the group too
            f"error: {me}: not every process of the run joined{at} within {group.join_timeout_seconds} s "
            "(--join_timeout_seconds). Were they all started, each with its own --process_id, and can this host "
            "reach the coordinator? Outside SLURM pass --coordinator_address, --num_processes and --process_id, "
            "or set JAX_COORDINATOR_ADDRESS",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)

    timeout = threading.Timer(group.join_timeout_seconds, give_up)
    timeout.daemon = True
    timeout.start()
    try:
        jax.distributed.initialize(
            coordinator_address=group.coordinator_address or None,
            num_processes=group.num_processes or None,
            process_id=None if group.process_id < 0 else group.process_id,
            heartbeat_timeout_seconds=group.heartbeat_timeout_seconds,
            initialization_timeout=group.join_timeout_seconds + 60,
        )
    except (ValueError, RuntimeError) as e:  # JAX found no group to join (no cluster, no address)
        raise DistributedError(
            f"cannot join the distributed run ({e}). Outside SLURM pass --coordinator_address, --num_processes and "
            "--process_id, or set JAX_COORDINATOR_ADDRESS"
        ) from None
    finally:
        timeout.cancel()
    _check_group(group)
    # The first collective sets up the processes' communicator, and gloo (CPU) gives that rendezvous 30 s; later
    # collectives wait as long as it takes. So all processes meet first, then run a tiny collective together: no
    # later gap between processes (process 0 building the data cache, one compiling slower) can fail it.
    barrier("joined")
    multihost_utils.sync_global_devices("sam_jax/collectives ready")


def default_sigterm() -> None:
    """In a group JAX's preemption notifier takes SIGTERM, and only a loop that asks it (training's, at each step)
    stops. Where nothing asks (evaluation), SIGTERM gets its default action back: the process ends at once, as it does
    alone, keeping what it wrote as it went (evaluation's rows); its peers then stop on losing it."""
    if jax.process_count() > 1:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _check_port_free(address: str) -> None:
    """Process 0 runs the coordination service on `address`'s port: a port already listening means another process
    0 (or another run) has it, which JAX would meet with an abort here and a hang there."""
    port = address.rsplit(":", 1)[-1]
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed earlier run's port is free
        try:
            probe.bind(("", int(port)))
        except OSError as e:
            raise DistributedError(
                f"--coordinator_address {address}: port {port} is in use ({e.strerror}): is another process "
                "--process_id=0 of this run, or another run, already there? Give each process its own --process_id"
            ) from None
        except ValueError:
            raise DistributedError(f"--coordinator_address {address}: expected host:port") from None


_held: list[locks.HeldLock] = []  # this process's claim on its --process_id, until it ends


def _hold_process_id(address: str, process_id: int) -> None:
    """Claim `process_id` of the run at `address` on this host, for as long as this process lives: a second process
    given the same id here is refused before it reaches the coordinator, where JAX takes it for the first one
    restarted and ends every process of the run with a C++ abort. (Two on different hosts still meet that abort.)"""
    folder = Path(tempfile.gettempdir()) / f"sam_jax-{os.getuid()}"
    name = f"run-{address.replace(':', '_').replace('/', '_')}-process-{process_id}.lock"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        _held.append(locks.hold(folder / name))
    except locks.LockTaken as e:
        raise DistributedError(
            f"--process_id {process_id} of the run at {address} is taken by another process on this host "
            f"({e.holder}): give each process its own --process_id"
        ) from None
    except OSError:  # no private temporary folder: JAX alone checks the ids
        pass


def _check_group(group: ProcessGroup) -> None:
    """Every process posts its --num_processes, --process_id and settings; all are compared on every process, which
    all stop with the same message naming what differs (barriers on the coordination service, with timeouts)."""
    client, me = _client(), jax.process_index()
    settings_now = group.to_dict() if hasattr(group, "to_dict") else dataclasses.asdict(group)
    post = {
        "num_processes": group.num_processes or jax.process_count(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "settings": {k: v for k, v in settings_now.items() if k not in ("process_id", "num_processes")},
    }
    try:
        client.key_value_set(f"{_GROUP_KEY}/{me}", json.dumps(post, sort_keys=True, default=str))
    except Exception:  # noqa: BLE001 — the key is taken: another process has this process_id
        taken = json.loads(client.key_value_try_get(f"{_GROUP_KEY}/{me}"))
        raise DistributedError(
            f"--process_id {me} is taken by another process (pid {taken['pid']} on {taken['host']}): give each its own"
        ) from None
    barrier("posted", timeout_seconds=group.heartbeat_timeout_seconds * 3)
    posts = {int(k.rsplit("/", 1)[-1]): json.loads(v) for k, v in client.key_value_dir_get(_GROUP_KEY)}
    counts = sorted({p["num_processes"] for p in posts.values()} | {len(posts)})
    problems = []
    if len(counts) > 1:
        given = ", ".join(f"{p['num_processes']} (process {i})" for i, p in sorted(posts.items()))
        problems.append(f"--num_processes: {given}, and {len(posts)} processes joined")
    first = posts[min(posts)]["settings"]
    for name in sorted(first):
        values = {i: p["settings"].get(name) for i, p in sorted(posts.items())}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            problems.append(f"--{name}: " + ", ".join(f"{v!r} (process {i})" for i, v in values.items()))
    if not problems:
        return
    message = "the processes of this run were started differently:\n  - " + "\n  - ".join(problems)
    if me != 0:  # say it and leave, then tell process 0, whose exit ends the service (aborting who is still on it)
        _say(message)
        client.key_value_set(f"{_TOLD_KEY}/{me}", "")
        os._exit(1)
    for i in set(posts) - {me}:
        try:
            client.blocking_key_value_get(f"{_TOLD_KEY}/{i}", 10_000)
        except Exception:  # noqa: BLE001 — it may be gone already; process 0 says it anyway
            pass
    _wait_until_gone([p for i, p in posts.items() if i != me])
    raise DistributedError(message)


def _wait_until_gone(peers: list[dict], limit_s: float = 10.0) -> None:
    """A peer that has told process 0 may still be waiting for the service's answer: were the service to end first,
    JAX would abort the peer (exit -6, not its own 1). So process 0 waits until peers on its host have exited, and
    gives those elsewhere a moment."""
    here = socket.gethostname()
    if any(p.get("host") != here for p in peers):
        time.sleep(2)
    deadline = time.monotonic() + limit_s
    for pid in (p["pid"] for p in peers if p.get("host") == here):
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _running(pid: int) -> bool:
    """Whether `pid` still runs on this host (an exited process waiting to be reaped by its parent does not)."""
    if Path("/proc/self/stat").exists():
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def is_writer() -> bool:
    """Process 0 writes what a run writes once: logs, TensorBoard, config, adapter, summaries."""
    return jax.process_index() == 0


def who() -> str:
    """'process i of n' in a multi-process run, '' otherwise: the prefix of every message that names a process."""
    return f"process {jax.process_index()} of {jax.process_count()}" if jax.process_count() > 1 else ""


def data_mesh() -> Mesh:
    """A 1-D 'data' mesh over every device of every process, ordered by process: process p's devices hold the p-th
    contiguous block of a batch, the rows it loads itself."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), ("data",))


def local_rows(sharding: NamedSharding, global_rows: int) -> tuple[int, int]:
    """[start, stop) of the rows of a `global_rows` batch this process's devices hold under `sharding`."""
    spans = {
        (s[0].start or 0, global_rows if s[0].stop is None else s[0].stop)
        for s in sharding.addressable_devices_indices_map((global_rows,)).values()
    }
    start, stop = min(a for a, _ in spans), max(b for _, b in spans)
    if sum(b - a for a, b in spans) != stop - start:
        raise DistributedError(f"{who()}: its devices hold no contiguous block of a batch of {global_rows}")
    return start, stop


def check_even_split(global_rows: int, name: str) -> None:
    """Each process loads an equal contiguous block of every batch: refuse a batch or layout that cannot."""
    rows = global_rows // jax.process_count()
    start, stop = local_rows(NamedSharding(data_mesh(), jax.sharding.PartitionSpec("data")), global_rows)
    if (start, stop) != (jax.process_index() * rows, (jax.process_index() + 1) * rows):
        raise DistributedError(
            f"{who()}: --{name} {global_rows} does not split into equal blocks of {rows} per "
            f"process (every process needs the same number of devices)"
        )


def global_batch(local: dict, sharding: NamedSharding, global_rows: int) -> dict:
    """One global array per leaf, sharded on the batch axis, from this process's block of rows."""
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (global_rows,) + v.shape[1:]) for k, v in local.items()
    }


def replicate(tree, sharding: NamedSharding):
    """A copy of `tree` (the same on every process) on every device of the run."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def to_host(x) -> np.ndarray:
    """A (possibly multi-process) array as one NumPy array on every process."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.sharding.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_rows(local: np.ndarray) -> np.ndarray:
    """Every process's block of rows (equal shapes), concatenated in process order, on every process."""
    if jax.process_count() == 1:
        return local
    return np.asarray(multihost_utils.process_allgather(local, tiled=True))


def barrier(name: str, timeout_seconds: int = 24 * 3600) -> None:
    """Wait until every process gets here (a no-op in a single process). On the coordination service, not a
    collective: a collective gives up after 30 s, too soon for process 0 building the data cache."""
    if jax.process_count() > 1:
        _client().wait_at_barrier(f"sam_jax/{name}", timeout_seconds * 1000)


_FAILURE_KEY = "sam_jax/failure"
_GROUP_KEY = "sam_jax/group"
_TOLD_KEY = "sam_jax/group_told"  # a process that found the group mismatched has said so


def _client():
    from jax._src.distributed import global_state  # the client JAX made: its key-value store and barrier

    return global_state.client


def _say(message: str) -> str:
    """Print `message` as an error naming this process; returns it so named."""
    message = f"{who()}: {message}" if who() else message
    print(f"error: {message}", file=sys.stderr, flush=True)
    return message


def fail_fast(message: str) -> None:
    """Print `message` naming this process as an error, then `leave`."""
    leave(_say(message), 1)


def leave(message: str, exit_code: int) -> None:
    """Several processes: post `message` (said already) for the other processes, and leave now with `exit_code`,
    without JAX's shutdown barrier: peers stuck in a collective with this process would hold it until its timeout.
    One process: nothing (the caller returns)."""
    if jax.process_count() > 1:
        try:
            _client().key_value_set(_FAILURE_KEY, message)
        except Exception:  # noqa: BLE001 — the service may be gone with the process that ran it
            pass
        os._exit(exit_code)


# gloo's CPU collectives (those inside orbax's checkpoint sync among them) report a peer that died mid-call as an
# error naming the dropped connection, not as XLA's JaxRuntimeError.
_CONNECTION_LOST = ("Connection closed by peer", "Connection reset by peer")


def is_lost_peer(error: Exception) -> bool:
    """Whether `error` is a collective or barrier failing under this process because another one is gone."""
    return isinstance(error, jax.errors.JaxRuntimeError) or any(s in str(error) for s in _CONNECTION_LOST)


def lost_peer(error: Exception) -> str:
    """What a process says when a collective or barrier failed under it: the failure another process posted, if
    any; else that a peer is gone (killed, or its host lost)."""
    try:
        posted = _client().key_value_try_get(_FAILURE_KEY)
    except Exception:  # noqa: BLE001 — nothing posted, or the service is gone too (process 0 died)
        posted = None
    cause = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if posted:
        return f"stopped because {posted}"
    return f"stopped: another process of the run is gone (killed or lost; see its log) ({cause})"
