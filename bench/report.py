"""`procmgr bench`: the measurements of bench/ in one run, as a Markdown
report with PNG plots, or as JSON."""

from __future__ import annotations

import os
import platform
import sys

from bench import aio, output, peers, pending_report, ring_report, scale, spawn, supervise

KINDS = ("ring", "spawn", "aio", "output", "pending", "scale", "supervise")


def run(kinds, quick: bool = False) -> dict:
    size, rounds = (0.02, 1) if quick else (0.5, 5)
    results: dict = {"machine": peers.machine(), "quick": quick}
    if "ring" in kinds:
        results["ring"] = peers.compare(rounds=rounds, scale=size)
    if "spawn" in kinds:
        results["spawn"] = (spawn.compare(n=20, rounds=1, block=5, blocks=4) if quick
                            else spawn.compare())
    if "aio" in kinds:
        results["aio"] = (aio.compare(block=5, blocks=4, many=50, rounds=2) if quick
                          else aio.compare())
    if "output" in kinds:
        results["output"] = (output.compare(blocks=4, block=10, rounds=2, history=50) if quick
                             else output.compare())
    if "pending" in kinds:
        results["pending"] = pending_report.compare(rounds=rounds, scale=size)
    if "scale" in kinds:
        results["scale"] = scale.measure(quick)
    if "supervise" in kinds:
        results["supervise"] = (supervise.measure(20, 2) if quick else supervise.measure())
    return results


def write(results: dict, directory: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    m = results["machine"]
    parts = ["# procmgr benchmarks", "",
             f"Machine: {m['cpus']} CPUs ({m['cpu']}), Linux {m['kernel']}, Python {m['python']}, "
             f"numpy {m['numpy']}, cffi {m['cffi']}, faster-fifo {m['faster_fifo']}.",
             f"Reproduce: `procmgr bench {' '.join(k for k in KINDS if k in results)} "
             f"--report {directory}`" + (" (quick: tiny sizes, not for quoting)"
                                          if results["quick"] else ""), ""]
    if "ring" in results:
        r = results["ring"]
        parts += ["## Ring", "", ring_report.table(r), "", "![ring](ring.png)", ""]
        _bars(plt, os.path.join(directory, "ring.png"),
              ["ringbuf", "faster-fifo", "mp.Pipe", "mp.Queue"],
              [r["medians"][k] for k in ("ring", "faster_fifo", "mp_pipe", "mp_queue")],
              "64-byte messages/s (log)", log=True,
              title=f"One message at a time, 2 processes ({m['cpus']} CPUs)")
    if "spawn" in results:
        s = results["spawn"]
        parts += ["## Spawn", "", spawn.table(s), "", "![spawn](spawn.png)", ""]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs = range(2)
        med = s["medians"]
        ax.bar([x - 0.2 for x in xs], [med["raw1"], med["raw8"]], 0.4, label="raw posix_spawn")
        ax.bar([x + 0.2 for x in xs], [med["rt1"], med["rt8"]], 0.4, label="runtime")
        ax.set_xticks(list(xs), ["one at a time", "8 in flight"])
        ax.set_ylabel("spawn + wait of /bin/true per s")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(directory, "spawn.png"), dpi=100)
        plt.close(fig)
    if "pending" in results:
        p = results["pending"]
        parts += ["## Pending clients", "", pending_report.table(p), "",
                  "![pending](pending.png)", ""]
        kinds = list(p["ns_per_request"])
        _bars(plt, os.path.join(directory, "pending.png"), kinds,
              [p["ns_per_request"][k] for k in kinds], "claim + match + release, ns/request")
    if "aio" in results:
        parts += ["## The asyncio client", "", aio.table(results["aio"]), ""]
    if "output" in results:
        parts += ["## Domain output", "", output.table(results["output"]), ""]
    if "scale" in results:
        parts += ["## Scale", "", scale.table(results["scale"]), "", "![scale](scale.png)", ""]
        scale.plot(results["scale"], os.path.join(directory, "scale.png"))
    if "supervise" in results:
        parts += ["## Restart latency", "", supervise.table(results["supervise"]), ""]
    path = os.path.join(directory, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path


def _bars(plt, path: str, names, values, ylabel: str, log: bool = False,
          title: str = "") -> None:
    """One bar per contender, this project's first and in colour."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, values, color=["tab:blue"] + ["tab:gray"] * (len(names) - 1))
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    out = write(run(KINDS), sys.argv[1] if len(sys.argv) > 1 else "bench-report")
    print(out, platform.node())
