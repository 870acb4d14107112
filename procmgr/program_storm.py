"""`procmgr storm --programs N`: supervised programs under a storm of
crashes, kills, stops, starts, restarts and reloads, checked from the
runtime's own events.

A runtime of its own supervises N programs from a procmgr.toml (crash
loops, long runners and programs that end cleanly, under each restart
policy). For ``seconds`` one client does at random: crash an incarnation
from outside (SIGKILL, which the supervisor must restart), kill it through
the runtime (a stop, never restarted), stop, start or restart a program,
or change the file and reload it (one program's argv changed: removed
and supervised again; one taken out or put back). A second client takes
every event in from the first (the runtime keeps them all here: none may
be lost). At the end every program is removed, and the events must say:

- every domain that was spawned ended exactly once (exited or killed);
- a program never runs two incarnations at once: each of its domains
  ended (by the core's events) before the next was spawned, and each
  domain is one program's incarnation once;
- after a program is stopped, finished, given up or removed, its next
  word is one a request makes ("started", "stopped", "removed"), never
  its own backoff or restart; a "restarted" only ever follows a "backoff";
- each program's restart count, as the runtime reported it last, is the
  number of "restarted" events since it was supervised (a restart whose
  spawn failed is one too, with its error);
- nothing outlives the runtime: no incarnation's process, no zombie.
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
import threading
import time
from collections import Counter

import psutil

from procmgr.client import config
from procmgr.client.runtime import Runtime
from procmgr.errors import Err, ProcMgmtError
from procmgr.protocol.programs import SETTLED

ACTIONS = {"crash": 4, "kill": 2, "stop": 2, "start": 3, "restart": 2, "reload": 1}
ANSWER_TIMEOUT = 30.0
# Program kinds: what each runs, and its restart policy.
_KINDS = [
    ("crasher", ["/bin/sh", "-c", "sleep 0.0$(($$ % 5)); exit 3"],
     'restart = "on-failure"\nbackoff = 0.0\nmax_restarts = -1\n'),
    ("server", ["/bin/sleep", "30"], 'restart = "always"\nbackoff = 0.01\nmax_restarts = -1\n'),
    ("flaky", ["/bin/sh", "-c", "sleep 0.2; exit 1"],
     'restart = "on-failure"\nbackoff = 0.0\nmax_restarts = 3\nperiod = 1.0\n'),
    ("oneshot", ["/bin/sh", "-c", "sleep 0.05"], 'restart = "on-failure"\n'),
]
_ENDS = ("exited", "killed")
_SETTLES = ("stopped", "finished", "given_up", "removed")
# What may follow a settled program: only what a request does (a start, a
# restart's stop -- of a finished one -- a remove, a supervise again).
_ASKED = ("started", "stopped", "removed")


def _toml(programs: dict[str, tuple[list[str], str]]) -> str:
    out = []
    for name, (argv, policy) in sorted(programs.items()):
        words = ", ".join('"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"' for a in argv)
        out.append(f"[programs.{name}]\nargv = [{words}]\n{policy}")
    return "\n".join(out)


class ProgramStorm:
    def __init__(self, rt: Runtime, programs: int, seed: int, path: str):
        self.rt = rt
        self.pm = rt.client()
        self.rng = random.Random(seed)
        self.path = path
        self.cores = rt.cores
        self.declared: dict[str, tuple[list[str], str]] = {}
        for i in range(programs):
            kind, argv, policy = _KINDS[i % len(_KINDS)]
            self.declared[f"{kind}{i}"] = (list(argv), policy)
        self.left_out: dict[str, tuple[list[str], str]] = {}
        self.done: Counter = Counter()
        self.errors: Counter = Counter()
        self.restarts_seen: dict[str, int] = {}      # name -> restarts, last reported

    def _apply(self) -> None:
        with open(self.path, "w") as f:
            f.write(_toml(self.declared))
        config.apply(self.pm, config.load(self.path, self.cores), timeout=ANSWER_TIMEOUT)

    def _note(self, info) -> None:
        self.restarts_seen[info.name] = info.restarts

    def step(self) -> None:
        action = self.rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
        name = self.rng.choice(sorted(self.declared))
        pm = self.pm
        try:
            if action == "crash":
                pid = pm.program(name, timeout=ANSWER_TIMEOUT).pid
                if pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass            # it ended meanwhile: nothing to crash
            elif action == "kill":
                info = pm.program(name, timeout=ANSWER_TIMEOUT)
                if info.domain is not None and info.pid:
                    pm.kill(info.domain, timeout=ANSWER_TIMEOUT)
            elif action == "stop":
                info = pm.stop_program(name, timeout=ANSWER_TIMEOUT)
                if info.state not in SETTLED:     # a stop leaves one settled as it was
                    self.errors[f"stop answered {info.state}"] += 1
            elif action == "start":
                self._note(pm.start_program(name, timeout=ANSWER_TIMEOUT))
            elif action == "restart":
                self._note(pm.restart_program(name, timeout=ANSWER_TIMEOUT))
            else:
                self._reload(name)
        except ProcMgmtError as e:
            # A kill racing the incarnation's own end finds it ended.
            if not (action == "kill" and e.code in (Err.DOMAIN_NOT_RUNNING,
                                                    Err.DOMAIN_FORGOTTEN)):
                self.errors[f"{action}: {e.code.name}"] += 1
        self.done[action] += 1

    def _reload(self, name: str) -> None:
        """Change one program's argv, and take one out or put one back."""
        argv, policy = self.declared[name]
        self.declared[name] = (argv[:-1] + [argv[-1] + " "] if argv[0] == "/bin/sh"
                               else argv[:-1] + [str(int(argv[-1]) + 1)], policy)
        if self.left_out and self.rng.random() < 0.5:
            back = self.rng.choice(sorted(self.left_out))
            self.declared[back] = self.left_out.pop(back)
        elif len(self.declared) > 2:
            out = self.rng.choice(sorted(n for n in self.declared if n != name))
            self.left_out[out] = self.declared.pop(out)
        self._apply()

    def finish(self) -> dict[str, int]:
        """Every program stopped (no restart after), its restart count
        read, and all of them removed."""
        names = [row["name"] for row in self.pm.programs(timeout=ANSWER_TIMEOUT)]
        for name in names:
            self.pm.stop_program(name, timeout=ANSWER_TIMEOUT)
        last = {row["name"]: row["restarts"] for row in self.pm.programs(timeout=ANSWER_TIMEOUT)}
        for name in names:
            self.pm.remove_program(name, timeout=ANSWER_TIMEOUT)
        return last


def check(events: list, last_restarts: dict[str, int]) -> list[str]:
    """What the events say went wrong (the module's text lists the rules).
    Incarnations are judged by the core's own words about their domains
    (spawned, ended), the program's only say which domain was which."""
    wrong = []
    if [e.seq for e in events] != list(range(1, len(events) + 1)):
        wrong.append("events are not numbered 1, 2, ... without a gap")
    if any(e.kind == "lost" for e in events):
        wrong.append("events were lost")
    spawned_at: dict[int, int] = {}     # domain -> seq of its "spawned"
    ended_at: dict[int, int] = {}       # domain -> seq of its first end
    ends: Counter = Counter()
    owner: dict[int, str] = {}          # domain -> the program it was an incarnation of
    incarnations: dict[str, list[int]] = {}
    last_word: dict[str, str] = {}
    restarted: Counter = Counter()      # since it was last supervised
    at_removal: dict[str, int] = {}
    for e in events:
        if e.program is None:
            if e.kind == "spawned":
                if e.domain in spawned_at:
                    wrong.append(f"domain {e.domain} spawned twice (event {e.seq})")
                spawned_at[e.domain] = e.seq
            elif e.kind in _ENDS:
                ends[e.domain] += 1
                ended_at.setdefault(e.domain, e.seq)
            continue
        name, before = e.program, last_word.get(e.program)
        if before in _SETTLES and e.kind not in _ASKED:
            wrong.append(f"{name} was {before}, then {e.kind} (event {e.seq}): only what a "
                         f"user asks for may follow")
        if e.kind == "restarted" and before != "backoff":
            wrong.append(f"{name} restarted after {before}, not after a backoff "
                         f"(event {e.seq})")
        if e.kind in ("started", "restarted") and e.domain is not None:   # it ran
            if e.domain not in spawned_at:
                wrong.append(f"{name}'s incarnation {e.domain} was never spawned "
                             f"(event {e.seq})")
            elif e.domain in owner:
                wrong.append(f"domain {e.domain} told as an incarnation twice (event {e.seq})")
            else:
                owner[e.domain] = name
                incarnations.setdefault(name, []).append(e.domain)
        if e.kind == "restarted":
            restarted[name] += 1
            if e.restarts != restarted[name]:
                wrong.append(f"{name}: restart {e.restarts} said, {restarted[name]} counted "
                             f"(event {e.seq})")
        if e.kind == "removed":
            at_removal[name] = restarted[name]
            restarted[name] = 0         # supervised again from 0 if it comes back
        last_word[name] = e.kind
    for name, doms in incarnations.items():     # one at a time: each ended before the next
        for a, b in zip(doms, doms[1:]):
            if ended_at.get(a, len(events) + 1) > spawned_at[b]:
                wrong.append(f"{name} ran {a} and {b} at once: {b} was spawned (event "
                             f"{spawned_at[b]}) before {a} ended")
    for dom in sorted(spawned_at):
        if ends[dom] != 1:
            wrong.append(f"domain {dom} ended {ends[dom]} times")
    for dom in sorted(set(ends) - set(spawned_at)):
        wrong.append(f"domain {dom} ended without having been spawned")
    for name, restarts in last_restarts.items():     # each removed last, by finish()
        if restarts != at_removal.get(name):
            wrong.append(f"{name}: {restarts} restarts reported, {at_removal.get(name)} "
                         f"restarted events")
    return wrong


def program_storm(cores: int = 2, programs: int = 12, seconds: float = 5.0,
                  seed: int | None = None) -> dict:
    """Run the storm (the module's text) and check it: a summary whose
    "wrong" is empty when every rule held."""
    seed = random.randrange(1 << 30) if seed is None else seed
    events: list = []
    with tempfile.TemporaryDirectory(prefix="procmgr-storm-") as tmp, \
            Runtime(cores=cores, events=1 << 20) as rt:
        manager = psutil.Process(rt.proc.pid)
        storm = ProgramStorm(rt, programs, seed, os.path.join(tmp, "procmgr.toml"))
        watcher = rt.client()
        failure: list = []
        target: list[int] = []              # the last event's seq, once the storm is over

        def watch() -> None:
            after, deadline = 0, None
            try:
                while not (target and after >= target[0]):
                    if target and deadline is None:
                        deadline = time.monotonic() + ANSWER_TIMEOUT
                    if deadline is not None and time.monotonic() > deadline:
                        failure.append(f"events up to {after} of {target[0]} came in")
                        return
                    try:
                        for event in watcher.events(after=after, timeout=0.2):
                            events.append(event)
                            if event.kind != "lost":
                                after = event.seq
                    except TimeoutError:
                        pass
            except BaseException as e:      # noqa: BLE001 -- said in the summary
                failure.append(f"the event watcher failed: {e!r}")

        storm._apply()
        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            storm.step()
        last = storm.finish()
        target.append(storm.pm.wait_for(storm.pm.events_async(), ANSWER_TIMEOUT)[0] - 1)
        thread.join(ANSWER_TIMEOUT * 2)
        if thread.is_alive():
            failure.append("the event watcher did not come to the last event")
        pids = {e.pid for e in events if e.kind == "spawned" and e.pid}
        cpu = manager.cpu_times()
        wall = time.monotonic() - started
    wrong = check(events, last) + failure + [f"{n} x {what}" for what, n in storm.errors.items()]
    alive = [pid for pid in pids if _alive(pid)]
    if alive:
        wrong.append(f"{len(alive)} incarnations outlived the runtime: {alive[:5]}")
    kinds = Counter(e.kind for e in events)
    return {"seed": seed, "seconds": round(wall, 2), "actions": dict(storm.done),
            "events": len(events), "kinds": dict(kinds),
            "manager_cpu_s": round(cpu.user + cpu.system, 2), "wrong": wrong}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
