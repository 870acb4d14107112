"""The control-plane load every control-plane figure is measured with:
spawn, then kill and wait, of many domains, by one client that keeps a
fixed number of requests in flight -- a sliding window, not batches, so no
process idles while a batch drains. Each answer sends what follows from it
(Future callbacks): a spawn's answer sends that domain's kill and wait.

Run against simulated dispatchers (``Runtime(simulate=True)`` or the
in-process runtime), it is the control plane alone; every figure says so.
"""

from __future__ import annotations

import time

PER_DOMAIN = 3   # requests per domain: spawn, kill, wait


def spawn_kill_wait_rate(client, cores: int, domains: int, in_flight: int = 256,
                         timeout: float = 60.0, answered_at: list | None = None) -> float:
    """Requests/s for spawn + kill + wait of ``domains`` domains, spread
    over ``cores``, with up to ``in_flight`` requests outstanding.
    ``answered_at``: the time.monotonic() of each answer is appended."""
    state = {"outstanding": 0, "answered": 0}
    note = (lambda: answered_at.append(time.monotonic())) if answered_at is not None else \
        (lambda: None)

    def ended(fut) -> None:          # a kill or a wait answered
        fut.result()                 # raises if it failed: a broken run is no figure
        state["outstanding"] -= 1
        state["answered"] += 1
        note()

    def spawned(fut) -> None:
        dom = fut.result()
        state["outstanding"] += 1    # -1 for the spawn, +2 for its kill and wait
        state["answered"] += 1
        note()
        client.kill_async(dom).add_done_callback(ended)
        client.wait_async(dom).add_done_callback(ended)

    total = PER_DOMAIN * domains
    sent = 0
    deadline = time.monotonic() + timeout
    start = time.perf_counter()
    while state["answered"] < total:
        # Spawns only while the window has room for their kill and wait too.
        while sent < domains and state["outstanding"] + PER_DOMAIN <= in_flight:
            state["outstanding"] += 1
            client.spawn_async(["sim"], core=sent % cores).add_done_callback(spawned)
            sent += 1
        if time.monotonic() > deadline:
            raise TimeoutError(f"{state['answered']} of {total} answers in {timeout} s")
        client.poll(timeout=1.0)
    return total / (time.perf_counter() - start)
