"""Starting a runtime and connecting to one.

    with procmgr.Runtime(cores=4) as rt:
        pm = rt.client()
        d = pm.spawn(["/bin/true"])
        pm.wait(d)                      # 0

``Runtime`` is the monitor: it starts the manager process (which starts one
spawnd worker per core), holds the monitor binding, and on exit -- or
Ctrl-C -- stops everything: domains killed and reaped, workers and manager
gone, segments unlinked. Other processes reach a runtime by its name with
``procmgr.connect(name)``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys

from procmgr.client import Client
from procmgr.osutil import runtime_dir
from ringbuf import Ring, RingError

START_TIMEOUT = 30.0


class RuntimeNotFound(ConnectionError):
    """No runtime of that name is running (for this user)."""


def connect(name: str, _token: str = "") -> Client:
    """A new client of the runtime called ``name``, with its own ring pair."""
    path = os.path.join(runtime_dir(name), "manager.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(START_TIMEOUT)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise RuntimeNotFound(f"no procmgr runtime named {name!r} is running") from None
    try:
        sock.sendall(json.dumps({"hello": 1, "token": _token}).encode() + b"\n")
        msg, fds, _, _ = socket.recv_fds(sock, 4096, 1)
        if not msg or not fds:
            raise RuntimeNotFound(f"runtime {name!r} refused the connection")
        names = json.loads(msg)
        doorbell = fds[0]
        os.set_inheritable(doorbell, False)
        requests, responses = Ring.attach(names["requests"]), Ring.attach(names["responses"])
        requests.set_doorbell(doorbell)     # we push requests: ring the manager
        responses.set_doorbell(doorbell)    # we pop answers: ring it if it waits for room
        sock.sendall(b'{"attached": 1}\n')
    except (OSError, ValueError, KeyError, RingError):
        sock.close()
        raise
    sock.settimeout(None)
    return Client(requests, responses, connection=sock, doorbell=doorbell)


class Runtime:
    def __init__(self, cores: int = 4, pending: str = "replyq", name: str | None = None,
                 kill_grace: float = 0.2, pin: bool = True):
        self.cores = cores
        self.pending = pending
        self.name = name or f"rt-{os.getpid()}-{secrets.token_hex(4)}"
        self.kill_grace = kill_grace
        self.pin = pin
        self.proc: subprocess.Popen | None = None
        self.monitor: Client | None = None
        self._clients: list[Client] = []

    def start(self) -> Runtime:
        token = secrets.token_hex(16)
        cmd = [sys.executable, "-m", "procmgr.server", "--name", self.name,
               "--cores", str(self.cores), "--pending", self.pending,
               "--kill-grace", str(self.kill_grace)]
        if not self.pin:
            cmd.append("--no-pin")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                     env=dict(os.environ, PROCMGR_MONITOR_TOKEN=token))
        ready = self.proc.stdout.readline()
        if ready.strip() != b"ready":
            self.close()
            raise RuntimeError(f"the manager of runtime {self.name!r} did not start")
        self.monitor = connect(self.name, token)
        return self

    def client(self) -> Client:
        """A new client binding (its own ring pair) in this process."""
        client = connect(self.name)
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Stop the runtime: every domain killed and reaped, nothing left."""
        for client in self._clients + ([self.monitor] if self.monitor else []):
            client.close()
        self._clients, self.monitor = [], None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
