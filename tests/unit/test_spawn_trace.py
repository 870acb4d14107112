"""bench.spawn_trace follows a program's exit to the next fork through the
scheduler events perf records; checked here on a hand-written trace."""

from bench.spawn_trace import CHAIN, parse, steps, table

CLIENT, MANAGER, W0, W1 = 100, 200, 300, 301
ROLES = {CLIENT: "client", MANAGER: "manager", W0: "worker", W1: "worker"}


def fork(t, parent, child):
    return (f"python {parent} [000] {t:.6f}: sched:sched_process_fork: comm=python "
            f"pid={parent} child_comm=python child_pid={child}")


def switch(t, prev, state, nxt):
    return (f"x {prev} [000] {t:.6f}: sched:sched_switch: prev_comm=x prev_pid={prev} "
            f"prev_prio=120 prev_state={state} ==> next_comm=y next_pid={nxt} next_prio=120")


def waking(t, waker, woken):
    return (f"python {waker} [000] {t:.6f}: sched:sched_waking: comm=python pid={woken} "
            f"prio=120 target_cpu=001")


def one_spawn_after_another() -> str:
    """Program 500 (on W0) exits at 1.000000 s; the exit goes worker ->
    manager -> client -> manager -> W1, which forks program 501 -- with
    noise in between that is not a milestone."""
    us = 1e-6
    t0 = 1.0
    lines = [
        fork(t0 - 700 * us, W0, 500),
        switch(t0, 500, "Z", W0),                         # the program exits
        waking(t0 + 5 * us, W0, 999),                     # not a milestone
        waking(t0 + 20 * us, W0, MANAGER),
        switch(t0 + 50 * us, W0, "S", MANAGER),
        waking(t0 + 90 * us, MANAGER, CLIENT),
        switch(t0 + 110 * us, MANAGER, "S", CLIENT),
        waking(t0 + 140 * us, CLIENT, MANAGER),
        switch(t0 + 146 * us, CLIENT, "R", MANAGER),
        waking(t0 + 180 * us, MANAGER, W1),
        switch(t0 + 196 * us, MANAGER, "S", W1),
        fork(t0 + 242 * us, W1, 501),
        switch(t0 + 900 * us, 501, "Z", W1),              # exits; no fork follows
    ]
    return "\n".join(lines)


def test_each_step_of_the_chain_is_timed():
    r = steps(parse(one_spawn_after_another()), ROLES)
    assert [round(s[0]) for s in r["steps"]] == [20, 30, 40, 20, 30, 6, 34, 16, 46]
    assert [round(x) for x in r["exit_to_fork"]] == [242]
    assert [round(x) for x in r["life"]] == [700, 658]
    assert len(CHAIN) == len(r["steps"])


def test_an_exit_missing_a_milestone_counts_only_in_the_total():
    trace = one_spawn_after_another().replace(
        waking(1.0 + 140e-6, CLIENT, MANAGER) + "\n", "")    # the manager was awake
    r = steps(parse(trace), ROLES)
    assert all(s == [] for s in r["steps"])
    assert [round(x) for x in r["exit_to_fork"]] == [242]


def test_the_table_has_every_step_and_both_totals():
    r = steps(parse(one_spawn_after_another()), ROLES)
    raw = steps(parse(one_spawn_after_another()), {CLIENT: "client"})
    text = table({"runtime": r, "raw": raw, "n": 1})
    assert all(label in text for label, *_ in CHAIN)
    assert "**~242 µs** | **~242 µs**" in text
