"""Supervised programs under a storm of crashes, kills, stops, starts,
restarts and reloads, checked from the runtime's events
(procmgr/program_storm.py), and the checker itself: each rule it holds
the events to, broken on purpose, is caught."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from procmgr.client.events import Event
from procmgr.program_storm import check, program_storm

pytestmark = pytest.mark.usefixtures("no_zombie_children")


def test_a_program_storm_keeps_every_rule():
    summary = program_storm(cores=2, programs=12, seconds=4, seed=7)
    assert summary["wrong"] == []
    acts = summary["actions"]
    assert all(acts.get(a, 0) > 10 for a in ("crash", "kill", "stop", "start", "restart",
                                             "reload"))
    kinds = summary["kinds"]
    # Crashes restarted, kills and stops stopped, reloads removed.
    assert kinds["restarted"] > 50 and kinds["stopped"] > 50 and kinds["removed"] > 10
    assert kinds["spawned"] == kinds.get("exited", 0) + kinds.get("killed", 0)


def test_procmgr_storm_programs_from_the_shell():
    out = subprocess.run([sys.executable, "-m", "procmgr", "storm", "--programs", "6",
                          "--seconds", "1.5", "--seed", "3", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["seed"] == 3 and summary["wrong"] == [] and summary["events"] > 0


def ev(seq, kind, domain, program=None, restarts=None):
    return Event(seq, kind, 0.0, domain=domain, program=program, restarts=restarts)


GOOD = [ev(1, "spawned", 1), ev(2, "started", 1, "p", 0), ev(3, "exited", 1),
        ev(4, "backoff", 1, "p", 0), ev(5, "spawned", 2), ev(6, "restarted", 2, "p", 1),
        ev(7, "killed", 2), ev(8, "stopped", 2, "p", 1), ev(9, "removed", 2, "p", 1)]


@pytest.mark.parametrize("events, words", [
    (GOOD[:2] + [ev(3, "spawned", 2), ev(4, "exited", 1), ev(5, "backoff", 1, "p", 0),
                 ev(6, "restarted", 2, "p", 1), ev(7, "exited", 2)], "ran 1 and 2 at once"),
    (GOOD[:8] + [ev(9, "backoff", 2, "p", 1), ev(10, "spawned", 3),
                 ev(11, "restarted", 3, "p", 2), ev(12, "exited", 3)],
     "was stopped, then backoff"),
    (GOOD[:7] + [ev(8, "stopped", 2, "p", 1), ev(9, "spawned", 3),
                 ev(10, "restarted", 3, "p", 2), ev(11, "exited", 3)],
     "was stopped, then restarted"),
    (GOOD[:2] + [ev(3, "started", 1, "p", 0), ev(4, "exited", 1)], "told as an incarnation twice"),
    (GOOD[:3] + [ev(4, "backoff", 1, "p", 0), ev(5, "restarted", 9, "p", 1)],
     "incarnation 9 was never spawned"),
    (GOOD + [ev(10, "exited", 2)], "domain 2 ended 2 times"),
    (GOOD[:4] + GOOD[5:], "without a gap"),
    (GOOD[:5], "domain 2 ended 0 times"),
])
def test_the_checker_catches_each_broken_rule(events, words):
    assert check(GOOD, {"p": 1}) == []
    assert any(words in w for w in check(events, {})), check(events, {})


def test_the_checker_compares_restart_counts():
    assert any("2 restarts reported, 1" in w for w in check(GOOD, {"p": 2}))
