"""What capturing a domain's output costs, against the same programs
without the runtime, in one run (`python -m bench.output`):

- spawn + wait of /bin/true one at a time, stdout and stderr captured
  (LOG, the default) against raw posix_spawn + waitpid with them opened on
  files; and with DEVNULL against raw with /dev/null. The runtime is warmed
  past its history on every core first: from then on its log files are
  recycled, as in any runtime that has run a few thousand programs;
- a program writing 100 MiB to stdout in 64 KiB writes (dd): captured by
  the runtime (default bounds: 1 MiB files, one backup, so ~100 rotations)
  against the same program writing to a file directly, and beside them
  subprocess with PIPE + communicate. All three run on the same CPU (the
  runtime pins a domain to its core's; the others are pinned there).

Spawns take the cores in turn, one at a time, as bench.spawn does (two
cores here): a spawn on a core whose worker has just reported the previous
exit waits for that worker's bookkeeping.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time

import procmgr
from bench.spawn import interleaved
from bench.stats import median_interval

TRUE = ["/bin/true"]
MB = 1 << 20
WRITER = ["/bin/dd", "if=/dev/zero", "bs=64K", "count=1600", "status=none"]   # 100 MiB
WRITTEN = 64 * 1024 * 1600


def raw_spawn_rate(n: int, outputs: tuple[str, str]) -> float:
    """posix_spawn + waitpid, stdin /dev/null and 1, 2 opened as given."""
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)] + [
        (os.POSIX_SPAWN_OPEN, fd, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for fd, path in zip((1, 2), outputs)]
    env = dict(os.environ)
    start = time.perf_counter()
    for _ in range(n):
        os.waitpid(os.posix_spawn(TRUE[0], TRUE, env, file_actions=actions), 0)
    return n / (time.perf_counter() - start)


def runtime_spawn_rate(pm, n: int, cores: int, **streams) -> float:
    """One at a time, taking the cores in turn (as bench.spawn does)."""
    start = time.perf_counter()
    for i in range(n):
        pm.wait(pm.spawn(TRUE, core=i % cores, **streams, timeout=30), timeout=30)
    return n / (time.perf_counter() - start)


def _pinned(cpu: int):
    return lambda: os.sched_setaffinity(0, {cpu})


def direct_write_rate(path: str, cpu: int) -> float:
    """MB/s of the writer with its stdout on a file."""
    with open(path, "wb") as f:
        start = time.perf_counter()
        subprocess.run(WRITER, stdout=f, check=True, preexec_fn=_pinned(cpu))
        took = time.perf_counter() - start
    os.unlink(path)
    return WRITTEN / MB / took


def pipe_rate(cpu: int) -> float:
    """MB/s of the writer read through a pipe by this process (communicate)."""
    start = time.perf_counter()
    p = subprocess.Popen(WRITER, stdout=subprocess.PIPE, preexec_fn=_pinned(cpu))
    out, _ = p.communicate()
    took = time.perf_counter() - start
    assert len(out) == WRITTEN and p.returncode == 0
    return WRITTEN / MB / took


def runtime_write_rate(pm) -> float:
    """MB/s of the writer whose stdout the runtime captures (default bounds)."""
    start = time.perf_counter()
    d = pm.spawn(WRITER, core=0, timeout=30)
    status = pm.wait(d, timeout=120)
    took = time.perf_counter() - start
    assert status == 0
    kept = len(pm.output(d))
    assert 0 < kept <= WRITTEN, kept
    return WRITTEN / MB / took


def compare(blocks: int = 60, block: int = 50, rounds: int = 7, history: int = 4096,
            cores: int = 2) -> dict:
    """LOG spawns and DEVNULL spawns each in a runtime of their own: in one
    runtime, the recycling a LOG spawn leads to (its rotator's, batched)
    would fall on whichever block came next."""
    quiet = {"stdout": procmgr.DEVNULL, "stderr": procmgr.DEVNULL}
    with contextlib.ExitStack() as stack:
        rt = stack.enter_context(procmgr.Runtime(cores=cores, history=history))
        rt_quiet = stack.enter_context(procmgr.Runtime(cores=cores, history=history))
        scratch = stack.enter_context(tempfile.TemporaryDirectory(
            dir=os.path.dirname(rt.client().logs_dir)))
        pm, pm_quiet = rt.client(), rt_quiet.client()
        cpu = sorted(os.sched_getaffinity(0))[0]        # core 0's CPU
        files = (os.path.join(scratch, "out"), os.path.join(scratch, "err"))
        # Warm: once each core has ended as many domains as the manager
        # remembers, the oldest log files come back as spares, and a spawn
        # creates no file (spawnd_workers/_rotator.h, "Spare files").
        runtime_spawn_rate(pm, cores * rt.history + 200, cores)
        runtime_spawn_rate(pm_quiet, 200, cores, **quiet)
        spawn = interleaved({
            "raw_file": functools.partial(raw_spawn_rate, block, files),
            "rt_log": functools.partial(runtime_spawn_rate, pm, block, cores),
            "raw_null": functools.partial(raw_spawn_rate, block, (os.devnull, os.devnull)),
            "rt_null": functools.partial(runtime_spawn_rate, pm_quiet, block, cores, **quiet),
        }, blocks)
        write = interleaved({
            "direct": functools.partial(direct_write_rate, os.path.join(scratch, "w"), cpu),
            "runtime": functools.partial(runtime_write_rate, pm),
            "pipe": functools.partial(pipe_rate, cpu),
        }, rounds)
    paired = {
        "log": [a / b for a, b in zip(spawn["rt_log"], spawn["raw_file"])],
        "null": [a / b for a, b in zip(spawn["rt_null"], spawn["raw_null"])],
        "write": [a / b for a, b in zip(write["runtime"], write["direct"])],
        "pipe": [a / b for a, b in zip(write["pipe"], write["direct"])],
    }
    return {"spawn": {k: statistics.median(v) for k, v in spawn.items()},
            "write": {k: statistics.median(v) for k, v in write.items()},
            "ratio": {k: statistics.median(v) for k, v in paired.items()},
            "interval": {k: median_interval(v) for k, v in paired.items()},
            "blocks": blocks, "block": block, "rounds": rounds, "cores": cores,
            "cpus": os.cpu_count()}


def table(r: dict) -> str:
    s, w, q, iv = r["spawn"], r["write"], r["ratio"], r["interval"]

    def span(k):
        return f"{iv[k][0]:.2f}–{iv[k][1]:.2f}x"
    return "\n".join([
        "| spawn + wait of /bin/true, one at a time, per s | raw | runtime | runtime / raw |",
        "|---|---:|---:|---:|",
        f"| stdout, stderr: files (raw) / captured, LOG (runtime) | {s['raw_file']:,.0f} | "
        f"{s['rt_log']:,.0f} | {q['log']:.2f}x ({span('log')}) |",
        f"| stdout, stderr: /dev/null (DEVNULL) | {s['raw_null']:,.0f} | {s['rt_null']:,.0f} | "
        f"{q['null']:.2f}x ({span('null')}) |",
        "",
        "| 100 MiB to stdout in 64 KiB writes (dd), MB/s | to a file directly | "
        "runtime, captured | runtime / file | subprocess PIPE + communicate | pipe / file |",
        "|---|---:|---:|---:|---:|---:|",
        f"| median of {r['rounds']} rounds | {w['direct']:,.0f} | {w['runtime']:,.0f} | "
        f"{q['write']:.2f}x ({span('write')}) | {w['pipe']:,.0f} | {q['pipe']:.2f}x |",
        "",
        f"Spawns: {r['blocks']} blocks of {r['block']} on {r['cores']} cores in turn, the four "
        f"interleaved, LOG and DEVNULL each in a runtime of its own; writes: "
        f"{r['rounds']} interleaved rounds, all pinned to one CPU. Ratios: the median of "
        f"each block's or round's ratio, with where that median lies "
        f"({iv['log'][2]:.0%} confidence for spawns; bench/stats.py). {r['cpus']} CPUs. "
        f"Reproduce: `.venv/bin/python -m bench.output`.",
    ])


def main() -> int:
    quick = "--quick" in sys.argv
    print(table(compare(blocks=4, block=10, rounds=2, history=50) if quick else compare()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
