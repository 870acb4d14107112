"""procmgr.cluster: a runtime per node of a Ray cluster. A cluster of two
nodes (Ray's cluster_utils: a raylet each, on this machine) for the
module, a third node for the tests that kill one; everything checked
from outside: statuses, processes gone, tokens in other processes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time

import psutil
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster as RayCluster  # noqa: E402

import procmgr.cluster as pcluster  # noqa: E402
from procmgr.errors import Err, ProcMgmtError  # noqa: E402
from e2e_helpers import T, process_gone, wait_until  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Ray's own failure detection, and a node's start on 2 busy CPUs.
NODE_T = 60.0


@pytest.fixture(autouse=True)
def _no_zombies():
    """Instead of e2e's check of every descendant: the processes below
    Ray's own (its raylets reap their workers' orphans, in their time)
    are Ray's to reap; what this process started, it reaps."""
    yield
    me = psutil.Process()
    assert not [c.pid for c in me.children() if c.status() == psutil.STATUS_ZOMBIE]


def node_runtimes() -> list[int]:
    """Live processes of the nodes' runtimes (named ray-...): managers,
    workers and the programs they run carry the name."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        line = " ".join(p.info["cmdline"] or [])
        if p.info["status"] != psutil.STATUS_ZOMBIE and ("procmgr.manager.server" in line or
                                                         "spawnd_workers" in line) \
                and " ray-" in line:
            found.append(p.pid)
    return found


@pytest.fixture(scope="module")
def ray_cluster():
    rc = RayCluster(initialize_head=True, head_node_args={"num_cpus": 2})
    rc.add_node(num_cpus=2)
    rc.wait_for_nodes()
    try:
        yield rc
    finally:
        if ray.is_initialized():
            ray.shutdown()
        rc.shutdown()
        wait_until(lambda: not node_runtimes(), NODE_T, "every node's runtime gone")


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    c = pcluster.connect(ray_cluster.address)
    try:
        yield c
    finally:
        c.down()
        c.close()


def other_node(c) -> str:
    return next(n.node for n in c.nodes() if n.alive and n.node != c.here)


def test_every_node_runs_an_agent_with_a_runtime_of_its_cores(cluster):
    nodes = [n for n in cluster.nodes() if n.alive]
    assert len(nodes) >= 2 and cluster.here in {n.node for n in nodes}
    for n in nodes:
        assert n.cores == 2 and n.runtime.startswith("ray-") and n.containment


def test_spawns_are_placed_on_the_least_loaded_node_and_core(cluster):
    ds = [cluster.spawn(["sleep", "30"]) for _ in range(4)]
    try:
        # two nodes of two cores, nothing else running: one domain on each core
        assert sorted((d.node, d.core) for d in ds) == \
            sorted((n.node, c) for n in cluster.nodes() if n.alive for c in range(2))
        # the loads the agents count from their runtimes' events
        wait_until(lambda: all(n.live == (1, 1) for n in _fresh(cluster)), T, "loads 1, 1")
    finally:
        for d in ds:
            cluster.kill(d, timeout=T)


def _fresh(c):
    c._loads_at = 0.0          # look now, not at what was seen LOAD_TTL ago
    return [n for n in c.nodes() if n.alive]


@pytest.mark.parametrize("where", ["here", "other"])
def test_spawn_wait_kill_status_and_output_on_a_node(cluster, where):
    node = cluster.here if where == "here" else other_node(cluster)
    d = cluster.spawn(["sh", "-c", "echo on $PROCMGR_CORE; exit 3"], node=node, core=1)
    assert (d.node, d.core) == (node, 1)
    assert cluster.wait(d, timeout=T) == 3
    assert cluster.output(d) == b"on 1\n"
    paced = cluster.spawn(["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.2; done"], node=node)
    pieces, started = [], time.monotonic()
    for piece in cluster.follow(paced):          # as they come, until it ends
        pieces.append((piece, time.monotonic() - started))
    assert b"".join(p for p, _ in pieces) == b"1\n2\n3\n"
    assert pieces[0][1] < 0.3                      # the first before the last was written
    info = cluster.status(d)
    assert info.exit_status == 3 and not info.killed and info.cpu_user is not None
    d = cluster.spawn(["sleep", "30"], node=node)
    pid = cluster.status(d).pids[0]
    assert not process_gone(pid)
    cluster.kill(d, timeout=T)
    assert process_gone(pid)                      # gone when the kill answers
    assert cluster.wait(d, timeout=T) == 9 and cluster.status(d).killed


def test_a_token_works_in_another_process(cluster, ray_cluster):
    d = cluster.spawn(["sleep", "30"], node=other_node(cluster))
    code = f"""
import procmgr.cluster as pc
c = pc.connect({ray_cluster.address!r})
d = c.domain({d.token!r})
c.kill(d, timeout=10)
print(c.wait(d, timeout=10))
c.close()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout.split()[-1] == b"9"
    assert cluster.wait(d, timeout=T) == 9


def test_bad_input_is_refused_in_words(cluster):
    with pytest.raises(TypeError, match="list of arguments"):
        cluster.spawn("sleep 1")
    with pytest.raises(ValueError, match="no node 'nowhere'"):
        cluster.spawn(["true"], node="nowhere")
    with pytest.raises(ValueError, match="not a cluster domain token"):
        cluster.wait("12:34")
    with pytest.raises(ProcMgmtError) as e:
        cluster.spawn(["true"], node=other_node(cluster), core=7)
    assert e.value.code == Err.INVALID_SPAWND
    forged = pcluster.ClusterDomain.from_token(cluster.spawn(["true"]).token)
    forged = pcluster.ClusterDomain(forged.node, forged.runtime, forged.id, forged.nonce ^ 1)
    with pytest.raises(ProcMgmtError) as e:
        cluster.wait(forged, timeout=T)
    assert e.value.code == Err.BAD_CAP


def test_the_asyncio_calls(cluster):
    async def main():
        a = cluster.aio()
        try:
            # calls made together go together; a bad one fails alone
            far = other_node(cluster)
            got = await asyncio.gather(*[a.spawn(["sh", "-c", "exit 2"], node=far)
                                         for _ in range(4)],
                                       a.spawn(["true"], node=far, bogus=1),
                                       return_exceptions=True)
            assert [type(g).__name__ for g in got] == ["ClusterDomain"] * 4 + ["TypeError"]
            assert await asyncio.gather(*[a.wait(d, timeout=T) for d in got[:4]]) == [2] * 4
            ds = await asyncio.gather(*[a.spawn(["sh", "-c", "exit 5"]) for _ in range(20)])
            assert {d.node for d in ds} == {n.node for n in cluster.nodes() if n.alive}
            assert await asyncio.gather(*[a.wait(d, timeout=T) for d in ds]) == [5] * 20
            d = await a.spawn(["sleep", "30"], node=other_node(cluster))
            await a.kill(d, timeout=T)
            assert (await a.status(d)).killed
            for node in (cluster.here, other_node(cluster)):
                d = await a.spawn(["sh", "-c", "echo a; sleep 0.1; echo b"], node=node)
                assert b"".join([p async for p in a.follow(d)]) == b"a\nb\n"
            # a program quiet for longer than a call's bound is followed on:
            # the agent says it is there (WAIT_SLICE 5 s + this slack 1 s)
            quick = pcluster.connect(timeout=1).aio()
            d = await quick.spawn(["sh", "-c", "echo a; sleep 6.5; echo b"], node=far)
            assert b"".join([p async for p in quick.follow(d)]) == b"a\nb\n"
            quick.close()
        finally:
            a.close()
    asyncio.run(main())


def test_a_killed_agent_takes_its_domains_with_it_and_a_new_one_serves_the_node(cluster):
    node = other_node(cluster)
    d = cluster.spawn(["sleep", "60"], node=node)
    pid = cluster.status(d).pids[0]
    ray.kill(cluster._agents[node][0])
    with pytest.raises(ProcMgmtError) as e:
        cluster.wait(d, timeout=T)
    assert e.value.code == Err.NODE_DIED
    wait_until(lambda: process_gone(pid), NODE_T, "the domain gone with its agent")
    cluster.refresh()                                   # a new agent, a new runtime
    assert node in {n.node for n in cluster.nodes() if n.alive}
    with pytest.raises(ProcMgmtError, match="started again") as e:
        cluster.status(d)
    assert e.value.code == Err.NODE_DIED
    d = cluster.spawn(["sh", "-c", "exit 4"], node=node)
    assert cluster.wait(d, timeout=T) == 4
    assert cluster.wait(d, timeout=0) == 4           # ended: asked once, not waited for

    async def after_the_restart():         # an asyncio client follows the new agent too
        a = cluster.aio()
        try:
            d = await a.spawn(["sh", "-c", "exit 5"], node=node)
            return await a.wait(d, timeout=T)
        finally:
            a.close()
    assert asyncio.run(after_the_restart()) == 5


def test_a_node_removed_mid_storm_fails_its_waiters_and_leaves_nothing_running(
        cluster, ray_cluster):
    third = ray_cluster.add_node(num_cpus=2)
    ray_cluster.wait_for_nodes()
    # A node that joins gets an agent at a spawn's next look for nodes,
    # and, the least loaded, the spawns after.
    cluster._looked_at = 0.0
    placed = set()
    deadline = time.monotonic() + NODE_T
    while third.node_id not in placed and time.monotonic() < deadline:
        d = cluster.spawn(["true"])
        assert cluster.wait(d, timeout=T) == 0
        placed.add(d.node)
        time.sleep(0.2)
        cluster._looked_at = min(cluster._looked_at, time.monotonic() - 4.5)
    doomed = third.node_id
    assert doomed in placed
    ds = [cluster.spawn(["sleep", "120"], node=doomed) for _ in range(6)]
    pids = [cluster.status(d).pids[0] for d in ds]
    outcomes: list = []

    def waiter(d):
        try:
            outcomes.append(cluster_waiter(ray_cluster.address, d))
        except Exception as e:          # noqa: BLE001 - the outcome is what is checked
            outcomes.append(e)

    # Waiters in other processes (each a client of its own), and storm
    # traffic on the other nodes meanwhile.
    def async_waiter(d):            # and one of this process's asyncio waits
        async def main():
            a = cluster.aio()
            try:
                return await a.wait(d, timeout=NODE_T + 30)
            finally:
                a.close()
        try:
            outcomes.append(asyncio.run(main()))
        except ProcMgmtError as e:
            outcomes.append(e.code.name)

    threads = [threading.Thread(target=waiter, args=(d,)) for d in ds[:2]]
    threads.append(threading.Thread(target=async_waiter, args=(ds[3],)))
    for t in threads:
        t.start()
    time.sleep(3)                       # the waiters connected and waiting
    survivors = [cluster.spawn(["sleep", "0.5"]) for _ in range(6)]
    t0 = time.monotonic()
    ray_cluster.remove_node(third)
    for t in threads:
        t.join(NODE_T + 60)
    assert outcomes == ["NODE_DIED"] * 3
    assert time.monotonic() - t0 < NODE_T
    with pytest.raises(ProcMgmtError) as e:
        cluster.wait(ds[2], timeout=NODE_T)
    assert e.value.code == Err.NODE_DIED
    wait_until(lambda: all(process_gone(p) for p in pids), NODE_T, "nothing left on the node")
    rows = cluster.ps()
    assert {"state": "NODE_DIED"}.items() <= next(
        r for r in rows if r["node"] == doomed[:12]).items()
    assert not [r for r in rows if r["node"] == doomed[:12] and r["state"] == "RUNNING"]
    assert all(d.node != doomed for d in [cluster.spawn(["true"]) for _ in range(4)])
    assert [cluster.wait(d, timeout=T) for d in survivors] == [0] * 6


def cluster_waiter(address: str, d) -> str:
    """A wait on ``d`` from a process of its own: what it ended with."""
    code = f"""
import procmgr.cluster as pc
from procmgr.errors import ProcMgmtError
c = pc.connect({address!r})
try:
    print(c.wait(c.domain({d.token!r})))
except ProcMgmtError as e:
    print(e.code.name)
c.close()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=NODE_T + 60,
                         env=dict(os.environ, PYTHONPATH=REPO))
    return out.stdout.decode().split()[-1] if out.stdout.split() else out.stderr.decode()[-500:]


def test_a_storm_across_nodes_keeps_every_answer(cluster):
    """Spawns, kills and waits at random across the nodes: every domain
    ends once, as it should have -- a killed one 9 and killed, one left
    to run its own exit code -- and nothing of it is left."""
    rng = random.Random(7)
    running, ended = [], []
    for _ in range(120):
        action = rng.random()
        if action < 0.5 or not running:
            code = rng.randrange(4)
            long = rng.random() < 0.5                  # runs until killed
            d = cluster.spawn(["sh", "-c", f"sleep {30 if long else 0.05}; exit {code}"])
            (running if long else ended).append((d, code))
        elif action < 0.8:
            d, _ = running.pop(rng.randrange(len(running)))
            cluster.kill(d, timeout=T)
            ended.append((d, 9))
        else:
            d, code = ended[rng.randrange(len(ended))]
            assert cluster.wait(d, timeout=T) == code
    for d, _ in running:
        cluster.kill(d, timeout=T)
    ended += [(d, 9) for d, _ in running]
    pids = []
    for d, expected in ended:
        assert cluster.wait(d, timeout=T) == expected
        info = cluster.status(d)
        assert (info.exit_status, info.killed) == (expected, expected == 9)
        pids += info.pids
    assert {d.node for d, _ in ended} == {n.node for n in cluster.nodes() if n.alive}
    assert all(process_gone(p) for p in pids)
    assert not {(d.node, d.id) for d, _ in ended} & set(cluster.domains())


def test_the_command_line(ray_cluster):
    def cli(*args: str) -> subprocess.CompletedProcess:
        command, *rest = args
        return subprocess.run([sys.executable, "-m", "procmgr", "cluster", command,
                               "--address", ray_cluster.address, *rest], capture_output=True,
                              timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
    up = cli("up", "--json")
    assert up.returncode == 0, up.stderr.decode()[-2000:]
    assert len([n for n in json.loads(up.stdout) if n["alive"]]) >= 2
    spawned = cli("spawn", "--json", "--", "sh", "-c", "echo from the cli; exit 2")
    assert spawned.returncode == 0, spawned.stderr.decode()[-2000:]
    token = json.loads(spawned.stdout)["token"]
    waited = cli("wait", token)
    assert waited.returncode == 2 and waited.stdout.split()[-1] == b"2"
    assert cli("logs", token).stdout == b"from the cli\n"
    assert cli("logs", token, "-f").stdout == b"from the cli\n"     # ended: all, then done
    sleeper = json.loads(cli("spawn", "--json", "--", "sleep", "30").stdout)["token"]
    assert any(r.get("id") == int(sleeper.split("/")[-1].split(":")[0])
               for r in json.loads(cli("ps", "--json").stdout))
    assert cli("kill", sleeper).returncode == 0
    assert cli("wait", sleeper).returncode == 9
    for bad in (cli("logs", token, "--tail", "-1"), cli("spawn", "--core", "-1", "--", "true")):
        assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1, bad.stderr
    bad = cli("wait", "not-a-token")
    assert bad.returncode != 0 and b"not a cluster domain token" in bad.stderr \
        and b"Traceback" not in bad.stderr
