"""Connecting to a runtime: the handshake never holds the manager up."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

import procmgr
from procmgr.osutil import runtime_dir

T = 10.0


@pytest.fixture
def rt():
    with procmgr.Runtime(cores=1, name=f"procmgr-test-{os.getpid()}-{time.monotonic_ns()}") as r:
        yield r


def _raw_connection(rt) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(T)
    s.connect(os.path.join(runtime_dir(rt.name), "manager.sock"))
    return s


def test_a_silent_connection_does_not_delay_other_clients(rt):
    pm = rt.client()
    silent = [_raw_connection(rt) for _ in range(3)]     # connect, then say nothing
    half = _raw_connection(rt)
    half.sendall(b'{"hello": 1')                          # half a line, then nothing
    try:
        start = time.monotonic()
        for _ in range(20):
            d = pm.spawn(["/bin/true"], timeout=T)
            assert pm.wait(d, timeout=T) == 0
        other = rt.client()                               # and a new client gets in
        assert other.wait(other.spawn(["/bin/sh", "-c", "exit 3"], timeout=T), timeout=T) == 3
        assert time.monotonic() - start < 1.5, "served only after the handshake timeout"
        # The silent ones are dropped once the handshake timeout has passed.
        for s in silent + [half]:
            assert s.recv(1) == b""
    finally:
        for s in silent + [half]:
            s.close()


def test_a_client_that_leaves_mid_handshake_leaves_no_ring(rt):
    s = _raw_connection(rt)
    s.sendall(json.dumps({"hello": 1}).encode() + b"\n")
    msg, fds, _, _ = socket.recv_fds(s, 4096, 1)
    names = json.loads(msg)
    for fd in fds:
        os.close(fd)
    s.close()                                             # never says "attached"
    pm = rt.client()
    assert pm.wait(pm.spawn(["/bin/true"], timeout=T), timeout=T) == 0   # a full loop pass
    for name in (names["requests"], names["responses"]):
        assert not os.path.exists("/dev/shm" + name), f"{name} left behind"


def test_garbage_instead_of_a_hello_is_refused(rt):
    s = _raw_connection(rt)
    try:
        s.sendall(b"this is not json\n")
        assert s.recv(1) == b""                           # closed on us
    finally:
        s.close()
    pm = rt.client()
    assert pm.wait(pm.spawn(["/bin/true"], timeout=T), timeout=T) == 0
