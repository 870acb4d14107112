"""How the manager starts its spawnd workers: forked from a template.

The template (spawnd_workers/template.py) is one process that imported
everything a worker needs; asked on a socketpair, it forks a worker that
becomes the manager's child. A worker is serving within a millisecond or
two instead of the ~75 ms of CPU an interpreter of its own takes to start
(64 cores took ~3 s to answer on two CPUs; docs/performance.md, "Scale",
"Cores"), and its pages stay shared with the template's.

The template lives as long as the manager, so a core restarted later
costs a fork too, not a stall of the manager's loop. If it dies (killed by
a peer of the same user, say), the next worker start makes a new one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from procmgr.osutil import wait_readable

# A new template imports the worker's modules (~75 ms here); a fork takes
# a millisecond or two. Past these something is wrong, and the worker start
# fails with the reason rather than stall the manager.
TEMPLATE_START_TIMEOUT = 10.0
FORK_TIMEOUT = 2.0


class _ForkFailed(Exception):
    """The template answered that its fork failed: a new template would
    fare no better (the machine is out of processes or memory)."""


class WorkerProcess:
    """A worker, the manager's child: the part of subprocess.Popen the
    server uses (pid, send_signal, kill, wait, returncode), on a pidfd --
    the worker was not started by Popen, and the pidfd is what the loop
    watches for its death."""

    def __init__(self, pid: int):
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.returncode: int | None = None

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass                    # exited, not reaped yet

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status, as Popen gives it (-N: ended by signal N)."""
        if self.returncode is None:
            if timeout is not None and not wait_readable(self.pidfd, timeout):
                raise subprocess.TimeoutExpired(f"spawnd worker {self.pid}", timeout)
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            os.close(self.pidfd)
            self.pidfd = -1
        return self.returncode


class WorkerTemplate:
    """The template process, and the requests that fork workers from it."""

    def __init__(self, runtime: str):
        self.runtime = runtime
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.answered = False

    @property
    def pid(self) -> int | None:
        """The template's pid while it runs (None once it has exited: it is
        reaped here, and the next fork starts a new one)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        return self.proc.pid

    def start(self) -> None:
        """Start the template (it imports while the caller goes on)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Its stdout and stderr are ours (the runtime's log), and so
            # its workers'.
            self.proc = subprocess.Popen(
                # The manager's pid last: Runtime._is_ours looks for it there.
                [sys.executable, "-m", "spawnd_workers", "--template",
                 "--socket-fd", str(theirs.fileno()), "--runtime", self.runtime,
                 "--manager-pid", str(os.getpid())],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.answered = False       # its first answer waits for its imports too

    def fork(self, options: list[str], fds: list[int]) -> WorkerProcess:
        """A new worker with these options (spawnd_workers/worker.py's, but
        its rings and doorbells) and these four descriptors: request ring,
        reply ring, its doorbell, the manager's.

        Each attempt has a "go" pipe of its own (spawnd_workers/template.py):
        a worker forked for an attempt given up on exits without touching
        the rings, so the retry's worker is the only one on them."""
        error = None
        for _attempt in (1, 2):
            if self.sock is None:
                self.start()
            go_r, go_w = os.pipe2(os.O_CLOEXEC)
            try:
                try:
                    pid = self._ask(options, fds + [go_r])
                finally:
                    os.close(go_r)
                worker = WorkerProcess(pid)         # ours now: let it go
                os.write(go_w, b"g")
                return worker
            except _ForkFailed as e:
                raise OSError(str(e)) from None
            except (OSError, ValueError) as e:
                # The template is gone, broken or too slow: a new one, once.
                error = e
                self.close()
            finally:
                os.close(go_w)
        raise OSError(f"the worker template failed: {error}")

    def _ask(self, options: list[str], fds: list[int]) -> int:
        """Send one request and read its answer, all within one deadline."""
        timeout = FORK_TIMEOUT if self.answered else TEMPLATE_START_TIMEOUT
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        socket.send_fds(self.sock, [json.dumps({"argv": options}).encode() + b"\n"], fds)
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise OSError(f"no answer from the worker template within {timeout} s")
            self.sock.settimeout(left)
            chunk = self.sock.recv(4096)
            if not chunk:
                raise OSError("the worker template closed its socket")
            line += chunk
        answer = json.loads(line)
        if not isinstance(answer, dict):
            raise ValueError("the worker template's answer is not an object")
        self.answered = True
        if not isinstance(answer.get("pid"), int) or answer["pid"] <= 0:
            # It is alive and answering: the fork itself failed (EAGAIN...).
            raise _ForkFailed(f"the worker template could not fork: {answer.get('error')}")
        return answer["pid"]

    def close(self) -> None:
        """End the template (it exits at EOF; killed if it does not)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
