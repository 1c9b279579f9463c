"""Real multi-process runs on this machine: 2 processes x 1 CPU device, a coordinator on 127.0.0.1, gloo
collectives. Training equals one process over 2 forced CPU devices (same global batch), which equals one device; a
process killed with SIGKILL stops the other within a bounded time, and the same command resumes both to the
uninterrupted result; evaluation over 2 processes writes the CSV one process writes.

The runs are shared by the tests (module fixtures; conftest.py keeps this module on one pytest-xdist worker) and share
one compilation cache: compiling dominates here."""

import csv
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import portpicker
import pytest
from apps import app_env, config_flags, run_app, start_app, xla_flags

from sam_jax.training.config import TrainConfig
from sam_jax.weights.io import read_arrays

ROOT = Path(__file__).resolve().parents[1]
HEARTBEAT_S = 5  # a process silent this long is declared dead
RUN_TIMEOUT_S = 600  # a hung run fails the test instead of the CI job


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Each process sees one CPU device unless told; all runs share one compilation cache."""
    return app_env(
        XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=1"),
        JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or str(tmp_path_factory.mktemp("jax_cache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )


@pytest.fixture(scope="module")
def train_flags(tiny_config):
    # MEN: the domain whose one phantom case the saved split holds out.
    return config_flags(tiny_config, eval_domains=("MEN",), steps=8, schedule="cosine", warmup_steps=2, eval_every=1000)


def _start(module, flags, processes, env, logs: Path, port=None):
    """`processes` processes of `python -m module flags` joined by a coordinator on a free loopback port; output in
    logs/p<i>.log."""
    port = port or portpicker.pick_unused_port()
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(processes):
        group = (
            []
            if processes == 1
            else [
                "--distributed",
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={processes}",
                f"--process_id={i}",
                f"--heartbeat_timeout_seconds={HEARTBEAT_S}",
            ]
        )
        with open(logs / f"p{i}.log", "w") as log:
            procs.append(start_app("-m", module, *flags, *group, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _finish(procs, logs: Path, timeout=RUN_TIMEOUT_S):
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"run hung for {timeout} s; logs in {logs}")
    failed = {i: p.returncode for i, p in enumerate(procs) if p.returncode}
    assert not failed, f"exit codes {failed}:\n" + (logs / f"p{min(failed)}.log").read_text()[-3000:]


def _train(flags, workdir, processes, env, **env_changes):
    procs = _start(
        "train.main",
        [*flags, f"--workdir={workdir}"],
        processes,
        {**env, **env_changes},
        Path(workdir).with_suffix(".logs"),
    )
    _finish(procs, Path(workdir).with_suffix(".logs"))


def _losses(workdir):
    return [json.loads(line)["loss"] for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _adapter(workdir):
    return read_arrays(Path(workdir) / "adapter.safetensors")[0]


@pytest.fixture(scope="module")
def runs(train_flags, env, tmp_path_factory):
    """The same training on 1 device, as 1 process over 2 devices and as 2 processes over 1 device each."""
    out = tmp_path_factory.mktemp("runs")
    _train(train_flags, out / "one_device", 1, env)
    _train(train_flags, out / "one_process", 1, env, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2"))
    _train(train_flags, out / "two_processes", 2, env)
    return out


@pytest.mark.slow
def test_two_devices_train_what_one_device_does(runs):
    """Data parallel over 2 forced CPU devices: the global batch split, the same losses within float tolerance."""
    np.testing.assert_allclose(_losses(runs / "one_process"), _losses(runs / "one_device"), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_processes_train_what_one_process_over_two_devices_does(runs):
    one, two = runs / "one_process", runs / "two_processes"
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-5, atol=1e-6)
    a, b = _adapter(one), _adapter(two)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # Process 0 alone writes the run's files; orbax writes one checkpoint with both processes' data iterators.
    for name in ("config.json", "metrics.jsonl", "summary.json", "adapter.safetensors", "tensorboard"):
        assert (two / name).exists(), name
    assert len(list((two / "tensorboard").iterdir())) == 1
    assert json.loads((two / "summary.json").read_text())["steps"] == 8
    last = two / "checkpoints" / "8" / "data"
    assert sorted(p.name for p in last.glob("process_*")) == ["process_0-of-2.json", "process_1-of-2.json"]


@pytest.mark.slow
def test_killed_process_stops_the_other_and_the_same_command_resumes(runs, train_flags, env, tmp_path):
    workdir = tmp_path / "killed"
    logs = tmp_path / "killed.logs"
    port = portpicker.pick_unused_port()
    flags = [*train_flags, f"--workdir={workdir}"]
    procs = _start("train.main", flags, 2, env, logs, port)
    checkpoints = workdir / "checkpoints"
    deadline = time.time() + RUN_TIMEOUT_S
    while (
        time.time() < deadline
        and all(p.poll() is None for p in procs)
        and not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()))
    ):
        time.sleep(0.05)
    assert procs[0].poll() is None and procs[1].poll() is None, (logs / "p0.log").read_text()[-3000:]
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    try:
        procs[0].wait(timeout=20 * HEARTBEAT_S)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail(f"process 0 still ran {20 * HEARTBEAT_S} s after process 1 was killed; log in {logs}")
    detected_s = time.time() - killed_at
    procs[1].wait()
    log = (logs / "p0.log").read_text()
    print(f"process 0 stopped {detected_s:.1f} s after process 1 was killed (exit code {procs[0].returncode})")
    assert procs[0].returncode != 0
    assert not (workdir / "adapter.safetensors").exists(), "the run ended before it could be killed"
    assert "process 0 of 2: stopped" in log or "JAX distributed service detected fatal errors" in log, log[-3000:]
    print(
        "process 0 said:",
        next(line for line in log.splitlines() if "stopped" in line or "detected fatal errors" in line),
    )

    _finish(_start("train.main", flags, 2, env, tmp_path / "resumed.logs"), tmp_path / "resumed.logs")
    assert "resumed from step" in (tmp_path / "resumed.logs" / "p0.log").read_text()
    straight, resumed = _adapter(runs / "two_processes"), _adapter(workdir)
    assert all(np.array_equal(straight[k], resumed[k]) for k in straight)


def _eval_rows(out_dir):
    with open(Path(out_dir) / "cases.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_evaluation_over_two_processes_writes_what_one_process_writes(runs, env, tmp_path):
    from sam_jax.data.phantom import write_phantom

    write_phantom(tmp_path / "data", cases_per_domain=3, seed=1, domains=("GLI",))  # 2 to process 0, 1 to process 1
    workdir = runs / "one_process"
    for processes in (1, 2):
        out = tmp_path / f"eval{processes}"
        flags = [
            f"--checkpoint={workdir}",
            f"--data_dir={tmp_path / 'data'}",
            "--domain=GLI",
            "--split=all",
            "--protocols=paper",
            "--overlays=0",
            f"--output_dir={out}",
        ]
        _finish(
            _start("eval.main", flags, processes, env, tmp_path / f"eval{processes}.logs"),
            tmp_path / f"eval{processes}.logs",
        )
    one, two = _eval_rows(tmp_path / "eval1"), _eval_rows(tmp_path / "eval2")
    assert len(one) == 3 and all(r["status"] == "ok" for r in one) and one == two
    assert json.loads((tmp_path / "eval1" / "summary.json").read_text()) == json.loads(
        (tmp_path / "eval2" / "summary.json").read_text()
    )
    assert sorted(p.name for p in (tmp_path / "eval2").iterdir()) == ["cases.csv", "summary.json"]


@pytest.mark.slow
def test_sigterm_ends_a_distributed_evaluation_and_the_other_process_says_why(runs, env, tmp_path):
    """SIGTERM to one process of `eval.main --distributed` ends it at once, as alone (JAX's preemption notifier used
    to take it: the evaluation went on); the other stops, naming the loss (its own words or JAX's), keeping the rows
    it wrote."""
    from sam_jax.data.phantom import write_phantom

    write_phantom(tmp_path / "data", cases_per_domain=4, seed=2, domains=("GLI",))
    out, logs = tmp_path / "eval", tmp_path / "logs"
    flags = [f"--checkpoint={runs / 'one_process'}", f"--data_dir={tmp_path / 'data'}", "--domain=GLI"]
    flags += ["--split=all", "--protocols=paper", "--overlays=0", f"--output_dir={out}"]
    procs = _start("eval.main", flags, 2, env, logs)
    started = out / "cases.process_1-of-2.csv"  # written once the model is loaded, before the first case
    deadline = time.time() + RUN_TIMEOUT_S
    while time.time() < deadline and all(p.poll() is None for p in procs) and not started.exists():
        time.sleep(0.05)
    assert all(p.poll() is None for p in procs), (logs / "p1.log").read_text()[-3000:]
    procs[1].send_signal(signal.SIGTERM)
    for p, limit in zip(procs[::-1], (30, 120)):
        try:
            p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"evaluation went on after SIGTERM; logs in {logs}")
    assert procs[1].returncode == -signal.SIGTERM
    text = (logs / "p0.log").read_text()
    # Ours when its barrier fails first, else JAX's coordination agent aborts it naming the lost task (as in training).
    said = ("process 0 of 2: stopped", "stopped sending heartbeats", "detected fatal errors")
    assert procs[0].returncode != 0 and any(s in text for s in said), text[-3000:]
    assert (out / "cases.process_0-of-2.csv").read_text().startswith("case,")


# Fast checks of the parts, in this process.


def test_process_blocks_of_a_batch_make_the_whole_batch(tmp_path, write_tiny_case):
    import grain

    from sam_jax.data.cache import build_cache
    from sam_jax.data.pipeline import make_dataset

    cases = ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000")
    for case_id in cases:
        write_tiny_case(tmp_path / "data", case_id)
    cache = build_cache(tmp_path / "data", tmp_path / "cache")
    for volume_batch, batch_size, prompt in ((0, 4, "click"), (4, 1, "click"), (0, 4, "both"), (4, 1, "box")):
        settings = dict(
            batch_size=batch_size, volume_batch=volume_batch, seed=7, z=3, drop_remainder=True, prompt=prompt
        )
        whole = make_dataset(cache, list(cases), **settings)
        blocks = [
            make_dataset(cache, list(cases), shard=grain.sharding.ShardOptions(i, 2), **settings) for i in range(2)
        ]
        assert ("boxes" in whole[0]) == (prompt != "click")
        for step in range(5):  # same images, masks, clicks and boxes, whatever the number of processes
            joined = {k: np.concatenate([b[step][k] for b in blocks]) for k in whole[step]}
            for k, v in whole[step].items():
                np.testing.assert_array_equal(joined[k], v, err_msg=f"{k} at step {step}")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(num_processes=2, process_id=0), "need --distributed"),
        (dict(distributed=True, num_processes=2), "give both or neither"),
        (dict(distributed=True, num_processes=2, process_id=2), r"process_id 2: expected an integer in \[0, 2\)"),
        (dict(distributed=True, heartbeat_timeout_seconds=0), "heartbeat_timeout_seconds 0"),
    ],
)
def test_process_group_settings_are_checked(change, message):
    from sam_jax.errors import SamJaxError

    with pytest.raises(SamJaxError, match=message):
        TrainConfig(data_dir="d", **change)


def test_process_rows_merge_in_case_order(tmp_path):
    from sam_jax.evaluation.evaluate import merge_process_csvs, process_csv

    header = "case,domain,status,error,seconds,paper_dice\n"
    (tmp_path / process_csv(0, 2)).write_text(header + "a,GLI,ok,,1.5,0.25\nc,GLI,failed,unreadable,0.1,\n")
    (tmp_path / process_csv(1, 2)).write_text(header + "b,GLI,ok,,2.0,0.125\n")
    rows = merge_process_csvs(tmp_path, ["a", "b", "c"], 2)
    assert (tmp_path / "cases.csv").read_text().splitlines()[1:] == [
        "a,GLI,ok,,1.5,0.25",
        "b,GLI,ok,,2.0,0.125",
        "c,GLI,failed,unreadable,0.1,",
    ]
    assert rows[1] == {"case": "b", "domain": "GLI", "status": "ok", "seconds": 2.0, "paper_dice": 0.125}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.csv"]


def test_a_peer_lost_inside_a_gloo_collective_is_told_from_other_errors():
    """The message gloo gave when process 1 was killed during orbax's checkpoint sync (seen under pytest-xdist's
    load): a lost peer, like XLA's own error; any other error is not one."""
    import jax

    from sam_jax.distributed import is_lost_peer

    gloo = ValueError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.2]:4321")
    assert is_lost_peer(gloo) and is_lost_peer(jax.errors.JaxRuntimeError("barrier timed out"))
    assert not is_lost_peer(ValueError("could not broadcast input array from shape (2,) into shape (3,)"))


@pytest.mark.slow
def test_sigterm_to_one_process_stops_every_process_at_one_step_with_its_checkpoint(tiny_config, env, tmp_path):
    """A scheduler's stop reaching one process: both finish the same step, write its checkpoint together and exit
    143, each saying so (JAX's preemption notifier used to take the SIGTERM and the run went on)."""
    flags = config_flags(tiny_config, eval_domains=("PED",), steps=500, checkpoint_every=1000, eval_every=1000)
    workdir, logs = tmp_path / "run", tmp_path / "logs"
    procs = _start("train.main", [*flags, f"--workdir={workdir}"], 2, env, logs)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + RUN_TIMEOUT_S
    while time.time() < deadline and all(p.poll() is None for p in procs) and not metrics.exists():
        time.sleep(0.05)
    assert all(p.poll() is None for p in procs), (logs / "p0.log").read_text()[-3000:]
    procs[1].send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"the run went on after SIGTERM; logs in {logs}")
    texts = [(logs / f"p{i}.log").read_text() for i in range(2)]
    assert [p.returncode for p in procs] == [143, 143], texts[0][-2000:] + texts[1][-2000:]
    step = json.loads(metrics.read_text().splitlines()[-1])["step"]
    for i, text in enumerate(texts):
        assert f"process {i} of 2: stopped by SIGTERM after step {step} of 500" in text, text[-3000:]
    data = workdir / "checkpoints" / str(step) / "data"
    assert sorted(p.name for p in data.glob("process_*")) == ["process_0-of-2.json", "process_1-of-2.json"]


def _group_flags(port, num_processes, process_id):
    return [
        "--distributed",
        f"--coordinator_address=127.0.0.1:{port}",
        f"--num_processes={num_processes}",
        f"--process_id={process_id}",
        f"--heartbeat_timeout_seconds={HEARTBEAT_S}",
    ]


@pytest.mark.slow
def test_processes_started_differently_all_stop_naming_the_difference(env, tmp_path):
    """--num_processes 2 and 3, and another learning rate: both processes stop with the same message naming both
    (before, they joined and trained). A second --process_id=0 is refused before it touches the coordinator (before,
    a C++ abort in one and a hang in the other)."""
    port = portpicker.pick_unused_port()

    def start(num_processes, process_id, *extra):
        return start_app(
            "-m",
            "train.main",
            f"--data_dir={tmp_path}",
            f"--workdir={tmp_path / 'run'}",
            *_group_flags(port, num_processes, process_id),
            *extra,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    first_zero = start(2, 0)
    deadline = time.time() + RUN_TIMEOUT_S
    while time.time() < deadline and first_zero.poll() is None:  # until its coordinator listens
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    second_zero = run_app(
        "-m", "train.main", f"--data_dir={tmp_path}", *_group_flags(port, 2, 0), env=env, timeout=RUN_TIMEOUT_S
    )
    assert second_zero.returncode == 1, second_zero.stderr[-3000:]
    assert f"--coordinator_address 127.0.0.1:{port}: port {port} is in use" in second_zero.stderr

    procs = [first_zero, start(3, 1, "--learning_rate=0.01")]
    outputs = [p.communicate(timeout=RUN_TIMEOUT_S)[0] for p in procs]
    expected = (
        "the processes of this run were started differently:\n"
        "  - --num_processes: 2 (process 0), 3 (process 1), and 2 processes joined\n"
        "  - --learning_rate: 0.0001 (process 0), 0.01 (process 1)"
    )
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 1 and f"error: process {i} of 2: {expected}" in out, out[-3000:]
        assert "Traceback" not in out and "Aborted" not in out


@pytest.mark.slow
def test_a_process_id_given_twice_is_refused_and_a_group_never_complete_says_so(env, tmp_path):
    """A second --process_id=1 on this host is refused at once naming the first (before, JAX took it for the first
    restarted and ended every process with a C++ abort); the first, its process 0 never started, stops after
    --join_timeout_seconds saying what was missing (before, a C++ abort after 300 s)."""
    port = portpicker.pick_unused_port()
    flags = ["-m", "train.main", f"--data_dir={tmp_path}", *_group_flags(port, 2, 1)]
    first = start_app(*flags, "--join_timeout_seconds=10", env=env, stderr=subprocess.PIPE, text=True, fresh=True)
    said = ""
    while "joining the run" not in said and first.poll() is None:
        said += first.stderr.readline()
    assert f"process 1 of 2: joining the run at 127.0.0.1:{port}" in said, said[-3000:]

    second = run_app(*flags, env=env, timeout=RUN_TIMEOUT_S)
    assert second.returncode == 1, second.stderr[-3000:]
    assert (
        f"--process_id 1 of the run at 127.0.0.1:{port} is taken by another process on this host "
        f"(pid {first.pid} on {socket.gethostname()}"
    ) in second.stderr, second.stderr[-3000:]

    said += first.communicate(timeout=RUN_TIMEOUT_S)[1]
    assert first.returncode == 1, said[-3000:]
    assert f"process 1 of 2: not every process of the run joined at 127.0.0.1:{port} within 10 s" in said
    assert "Check failure" not in said and "Aborted" not in said
