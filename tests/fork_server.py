"""Commands started by forking an interpreter that has already imported the library, instead of a fresh `python`:
a tiny command spends most of its ~5 s importing jax, flax and the rest (2–3 s), and the suite starts ~125 of them.

`python -S fork_server.py run ARGS` (what `apps.command` gives) is the test's process: it hands its argv, working
folder, environment and standard streams to this worker's server, which forks; the fork runs `python ARGS` as a fresh
interpreter would (`-m module` or a script, `__main__`, sys.argv, sys.path[0]). The client relays SIGINT, SIGTERM and
SIGHUP to the fork and ends as it ends (its exit code, or killed by its signal); the fork is killed when its client
is. Where no server runs for the client's environment (another PYTHONPATH or JAX_* setting, which the server's
imports have read), or the server cannot take it, the client becomes `python ARGS` itself (exec), so a command never
depends on the server. Commands that need to be the test's own child (their pid, their session) use a fresh process.

`python fork_server.py serve SOCKET_FOLDER` is the server: one per pytest worker (conftest.py), importing every
module of `sam_jax` but no app (apps define absl flags on import) and no accelerator backend (a process must not fork
once XLA's threads run), and ending with its parent. A fork's `sys.executable` is a client as well, so that the
commands a command starts (eval.reproduce's steps) are forked too."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys

RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def server_key(env) -> str:
    """What the server's imports have read from the environment: a client with another value runs as itself."""
    read = {k: v for k, v in env.items() if k.startswith(("JAX_", "PYTHON")) and k != "PYTHONHASHSEED"}
    return hashlib.sha256(json.dumps([sys.executable, sorted(read.items())]).encode()).hexdigest()[:16]


def socket_path(folder: str, env) -> str:
    return os.path.join(folder, server_key(env) + ".sock")


def _send(conn: socket.socket, payload: bytes, fds=()) -> None:
    message = struct.pack("!I", len(payload)) + payload
    if fds:
        socket.send_fds(conn, [message], list(fds))
    else:
        conn.sendall(message)


def _receive(conn: socket.socket, with_fds=0) -> tuple[bytes, list[int]]:
    if with_fds:
        data, fds, _, _ = socket.recv_fds(conn, 65536, with_fds)
    else:
        data, fds = conn.recv(65536), []
    if len(data) < 4:
        raise ConnectionError("closed")
    (size,) = struct.unpack("!I", data[:4])
    data = data[4:]
    while len(data) < size:
        more = conn.recv(size - len(data))
        if not more:
            raise ConnectionError("closed")
        data += more
    return data, fds


# The client: stdlib only, started with `python -S`.


def run_client(args: list[str]) -> None:
    folder = os.environ.get("SAM_JAX_TEST_FORK_SERVER", "")
    if not folder or not args or (args[0].startswith("-") and args[0] != "-m"):
        os.execv(sys.executable, [sys.executable, *args])
    conn = socket.socket(socket.AF_UNIX)
    try:
        conn.connect(socket_path(folder, os.environ))
        _send(conn, json.dumps({"argv": args, "cwd": os.getcwd(), "env": dict(os.environ)}).encode(), (0, 1, 2))
        reply, _ = _receive(conn)
    except (OSError, ConnectionError):
        conn.close()
        os.execv(sys.executable, [sys.executable, *args])  # no server for this environment: run as ourselves
    pid = int(reply)

    def relay(signum, _):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # it has just ended: its end is on its way
            pass

    for signum in RELAYED:
        signal.signal(signum, relay)
    try:
        how, value = _receive(conn)[0].decode().split()
    except ConnectionError:
        print("fork_server: the server ended before the command", file=sys.stderr)
        sys.exit(1)
    if how == "signal":
        signal.signal(int(value), signal.SIG_DFL)
        os.kill(os.getpid(), int(value))
    sys.exit(int(value))


# The server.


def _import_library() -> None:
    import pkgutil

    import sam_jax

    for module in pkgutil.walk_packages(sam_jax.__path__, "sam_jax."):
        __import__(module.name)
    from jax._src import xla_bridge

    if xla_bridge._backends:  # a backend's threads would not survive a fork
        raise RuntimeError("importing sam_jax started a JAX backend")


def serve(folder: str):
    """Serve until the parent ends; in each fork, return the command's argv (the caller runs it)."""
    import selectors

    _import_library()
    parent = os.getppid()
    path = socket_path(folder, os.environ)
    # The forks' sys.executable: a `python` that is a client too, so that a command's own commands (eval.reproduce's
    # steps) are forked as well. multiprocessing took the real one when the library imported it.
    python = os.path.join(folder, "python")
    with open(python, "w") as script:
        script.write(f'#!/bin/sh\nexec "{sys.executable}" -S "{os.path.abspath(__file__)}" run "$@"\n')
    os.chmod(python, 0o755)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path + ".new")
    os.rename(path + ".new", path)  # clients see the socket only once it listens
    listener.listen(64)
    wake_read, wake_write = os.pipe()  # SIGCHLD wakes the loop
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    running: dict[int, socket.socket] = {}  # fork pid -> its client's connection
    while os.getppid() == parent:
        # A client that ended (killed) first: its fork is gone before a command after it starts, as a process is
        # once it is killed (the next may need its workdir).
        for key, _ in sorted(selector.select(timeout=1.0), key=lambda event: event[0].fileobj is listener):
            if key.fileobj is wake_read:
                os.read(wake_read, 4096)
            elif key.fileobj is not listener:
                _kill(key.data)
                os.waitpid(key.data, 0)
                selector.unregister(running.pop(key.data))
                key.fileobj.close()
            elif request := _accept(listener):
                conn, argv, cwd, env, fds = request
                if (pid := os.fork()) == 0:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    selector.close()
                    for each in (listener, conn, *running.values()):
                        each.close()
                    os.close(wake_read)
                    os.close(wake_write)
                    _become(cwd, env, fds)
                    sys.executable = python
                    return argv
                for fd in fds:
                    os.close(fd)
                _send(conn, str(pid).encode())
                running[pid] = conn
                selector.register(conn, selectors.EVENT_READ, pid)
        for pid, ended in _ended(running):
            conn = running.pop(pid)
            selector.unregister(conn)
            try:
                _send(conn, ended.encode())
            except OSError:
                pass
            conn.close()
    for pid in running:
        _kill(pid)
    os.unlink(path)
    sys.exit(0)


def _accept(listener):
    conn, _ = listener.accept()
    try:
        payload, fds = _receive(conn, with_fds=3)
    except (OSError, ConnectionError):
        conn.close()
        return None
    request = json.loads(payload)
    sys.stdout.flush()
    sys.stderr.flush()
    return conn, request["argv"], request["cwd"], request["env"], fds


def _become(cwd: str, env: dict, fds: list[int]) -> None:
    """The fork takes its client's standard streams, folder and environment."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)


def _ended(running):
    """(pid, "exit CODE" or "signal NUMBER") of each fork that has ended."""
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in running:
            code = os.waitstatus_to_exitcode(status)
            yield pid, f"signal {-code}" if code < 0 else f"exit {code}"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_as_main(argv: list[str]) -> None:
    """What `python ARGV` does after start-up: `-m module` or a script, as `__main__`."""
    import os
    import runpy
    import sys

    main = sys.modules["__main__"].__dict__
    for name in [n for n in main if not n.startswith("__")]:
        del main[name]  # the command's __main__ holds only what it defines
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        sys.path[0] = os.getcwd()
        runpy._run_module_as_main(argv[1])  # what `python -m` calls
    else:
        sys.argv = list(argv)
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")


def run_forked(argv: list[str]) -> None:
    """run_as_main, then end as `python` ends (an uncaught exception printed, non-daemon threads joined, atexit
    callbacks run, standard streams flushed) but without tearing down every object of the interpreter: that teardown
    costs a tiny training command 0.6 s of CPU (of ~10 s)."""
    import atexit
    import os
    import sys
    import threading

    # Names local to this function: the command's run empties this module's namespace, __main__'s (run_as_main).
    def exit_code(end: SystemExit) -> int:
        """The status `python` exits with for an uncaught SystemExit, its message printed as `python` prints it."""
        if end.code is None:
            return 0
        if isinstance(end.code, int):
            return end.code & 0xFF
        print(end.code, file=sys.stderr)
        return 1

    try:
        run_as_main(argv)
        code = 0
    except SystemExit as end:
        code = exit_code(end)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run_client(sys.argv[2:])
    else:
        run_forked(serve(sys.argv[2]))
