"""The worker template: one process that has imported everything a worker
needs and forks a worker from itself whenever the manager asks.

Why: a worker started as ``python -m spawnd_workers`` spends ~75 ms of CPU
starting an interpreter and importing its modules before it serves
anything; 64 cores on two CPUs took ~2 s to answer. Forked from a template
that did it once, a worker is serving within a millisecond or two, and its
code and most of its heap stay pages shared with the template and every
other worker (docs/performance.md, "Scale", "Cores").

The protocol, on the socket the manager handed down (one of a socketpair;
nothing else can reach it): the manager sends one line of JSON,
``{"argv": [...]}`` -- the worker's options but its rings and doorbells --
with five descriptors (SCM_RIGHTS): the request ring, the reply ring, the
worker's doorbell, the manager's, and the read end of a pipe, "go". The
template answers with one line, ``{"pid": N}`` or ``{"error": "..."}``.

The new worker touches nothing until the manager writes a byte to "go",
which it does once it has taken the worker on (its pid answered, its
pidfd open). A manager that gave up on the request -- the template was
slow, or died mid-fork -- closes its end instead, and the worker, if it
came to be after all, exits at the EOF: two workers never serve one ring
pair, whatever the manager retries.

A worker must be the manager's child (the manager reaps it, reads its exit
status and is told at once when it dies; the worker ends with it through
PDEATHSIG). So the template forks twice: the middle process forks the
worker, says its pid and exits, and the worker -- an orphan -- goes to
the nearest subreaper above it, the manager (procmgr/manager/server.py
becomes one before it starts the template). The worker waits until that
has happened before it does anything else.

The template holds no domain, no ring and no descriptor of the runtime's
between requests; it ends when the manager does (PDEATHSIG) or closes the
socket.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys
import time
import traceback

from procmgr.osutil import die_with_parent, refuse_ptrace, set_cmdline, wait_readable
from spawnd_workers.worker import main as worker_main

# A request's descriptors, in the order they come: the worker's options that
# name them, then "go" (the worker's own).
FD_OPTIONS = ("--requests", "--replies", "--doorbell-fd", "--manager-doorbell-fd")
FDS = len(FD_OPTIONS) + 1
# How long a new worker waits to be re-parented to the manager (it takes
# the middle process's exit: microseconds), and then for its "go" (the
# manager writes it as soon as it has read the pid).
REPARENT_TIMEOUT = 5.0
GO_TIMEOUT = 30.0
MAX_REQUEST = 64 * 1024


def serve(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m spawnd_workers --template")
    ap.add_argument("--template", action="store_true", required=True)
    ap.add_argument("--socket-fd", type=int, required=True)
    ap.add_argument("--manager-pid", type=int, required=True)
    ap.add_argument("--runtime", default="", help="the runtime's name (shown by ps)")
    args = ap.parse_args(argv)
    die_with_parent(signal.SIGKILL, args.manager_pid)
    # It holds a new worker's rings while it forks it, and what it runs
    # becomes every worker: no other process of the user may look inside
    # (procmgr/osutil.py says why for the workers themselves).
    refuse_ptrace()
    sock = socket.socket(fileno=args.socket_fd)
    sock.setblocking(True)
    while True:
        try:
            line, fds = _request(sock)
        except (OSError, ValueError) as e:
            print(f"spawnd template: {e}", file=sys.stderr)
            return 1
        if line is None:
            return 0                    # the manager is done with us
        try:
            answer = {"pid": _fork_worker(json.loads(line)["argv"], fds, args, sock)}
        except (OSError, ValueError, KeyError, TypeError) as e:
            answer = {"error": f"{type(e).__name__}: {e}"}
        finally:
            for fd in fds:
                os.close(fd)
        try:
            sock.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            return 0    # the manager gave up on us (its "go" never comes)


def _request(sock: socket.socket) -> tuple[bytes | None, list[int]]:
    """One line and its descriptors (None at EOF). The manager sends a
    request whole in one sendmsg and waits for its answer before the next,
    so a line never spans two reads."""
    msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, FDS)
    if not msg:
        for fd in fds:
            os.close(fd)
        return None, []
    if not msg.endswith(b"\n") or len(fds) != FDS:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"a request must be one line with {FDS} descriptors")
    return msg, fds


def _fork_worker(options: list[str], fds: list[int], args, sock: socket.socket) -> int:
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise TypeError("argv must be a list of strings")
    argv = list(options)
    for option, fd in zip(FD_OPTIONS, fds):
        argv += [option, f"fd:{fd}" if option in ("--requests", "--replies") else str(fd)]
    go = fds[len(FD_OPTIONS)]
    said_r, said_w = os.pipe()
    middle = os.fork()
    if middle == 0:                                   # the middle process
        try:
            os.close(said_r)
            # The worker's command line, set before it is born (it inherits
            # this memory): whoever sees its pid sees a worker in ps. The
            # manager's pid last: Runtime._is_ours (procmgr/client/runtime.py)
            # knows its workers by it after a crash of the manager.
            core = argv[argv.index("--core") + 1] if "--core" in argv else "?"
            set_cmdline([sys.orig_argv[0], "-m", "spawnd_workers", "--core", core,
                         "--runtime", args.runtime, "--parent-pid", str(args.manager_pid)])
            worker = os.fork()
            if worker == 0:
                os.close(said_w)
                _become_worker(argv, go, args, sock)  # never returns
            os.write(said_w, struct.pack("i", worker))
        finally:
            os._exit(0)
    os.close(said_w)
    try:
        said = os.read(said_r, 4)
    finally:
        os.close(said_r)
        os.waitpid(middle, 0)
    if len(said) != 4:
        raise OSError("the worker's fork failed")
    return struct.unpack("i", said)[0]


def _become_worker(argv: list[str], go: int, args, sock: socket.socket) -> None:
    """In the new worker: wait to be the manager's and for its go, run,
    and exit -- never return into the template's loop."""
    code = 1
    try:
        sock.close()
        deadline = time.monotonic() + REPARENT_TIMEOUT
        while os.getppid() != args.manager_pid:
            if time.monotonic() > deadline:
                raise OSError(f"not re-parented to the manager ({args.manager_pid}) "
                              f"within {REPARENT_TIMEOUT} s")
            time.sleep(0.0001)
        if not wait_readable(go, GO_TIMEOUT) or os.read(go, 1) != b"g":
            os._exit(1)         # the manager gave up on us: never touch the rings
        os.close(go)
        code = worker_main(argv + ["--parent-pid", str(args.manager_pid)])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
