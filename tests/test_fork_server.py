"""A command forked from the worker's fork server (apps.command) behaves as `python` started afresh: the same
__name__, argv, sys.path[0], folder, environment, standard streams and exit code, and dies by the signal a fresh
process dies by. The reference is the fresh interpreter itself."""

import os
import signal
import subprocess
import time

from apps import app_env, command
from fork_server import socket_path

SCRIPT = """\
import atexit, os, signal, sys, threading, time
print(__name__, sys.argv, sys.path[0], os.getcwd(), os.environ["PROBE"], sys.stdin.read())
print("to stderr", file=sys.stderr)
if sys.argv[1] == "signal":
    os.kill(os.getpid(), signal.SIGTERM)
print(os.getppid(), file=sys.stderr)
atexit.register(lambda: print("atexit", flush=True))
threading.Thread(target=lambda: (time.sleep(0.2), print("thread", end=" "))).start()
print("unflushed", end=" ")
if sys.argv[1] == "raise":
    raise ValueError("uncaught")
sys.exit("a message" if sys.argv[1] == "message" else 3)
"""


def _run(script, how, cwd, *, fresh):
    return subprocess.run(
        command(script, how, fresh=fresh),
        cwd=cwd,
        env=app_env(PROBE="probe value"),
        input="from stdin",
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_forked_command_is_what_a_fresh_python_runs(tmp_path):
    ready = socket_path(os.environ["SAM_JAX_TEST_FORK_SERVER"], app_env(PROBE="probe value"))
    deadline = time.time() + 120
    while not os.path.exists(ready) and time.time() < deadline:  # the server's imports, at the session's start
        time.sleep(0.1)
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    fresh, forked = (_run(script, "exit", tmp_path, fresh=f) for f in (True, False))
    assert forked.returncode == fresh.returncode == 3
    expected = f"__main__ ['{script}', 'exit'] {tmp_path} {tmp_path} probe value from stdin\nunflushed thread atexit\n"
    assert forked.stdout == fresh.stdout == expected
    assert forked.stderr.splitlines()[0] == fresh.stderr.splitlines()[0] == "to stderr"
    # The ends of a run: an exit with a message, an uncaught exception.
    for how, code, last in (("message", 1, "a message"), ("raise", 1, "ValueError: uncaught")):
        fresh, forked = (_run(script, how, tmp_path, fresh=f) for f in (True, False))
        assert forked.returncode == fresh.returncode == code
        assert forked.stdout.splitlines()[-1] == fresh.stdout.splitlines()[-1] == "unflushed thread atexit"
        assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1] == last
    # Forked by the server: its parent is not this test, as a fresh process's (and the client's fallback's) is.
    assert int(fresh.stderr.splitlines()[1]) == os.getpid() != int(forked.stderr.splitlines()[1])
    fresh, forked = (_run(script, "signal", tmp_path, fresh=f) for f in (True, False))
    assert forked.returncode == fresh.returncode == -signal.SIGTERM
