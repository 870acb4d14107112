"""`python -m bench.ring_report`: the ring against its peers as Markdown
tables (what the README shows), all measured in one run, interleaved.

    python -m bench.ring_report [--rounds N] [--scale X] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.peers import BATCH, TARGETS, compare

REPRODUCE = ".venv/bin/python -m bench.ring_report"


def _x(ratio: float) -> str:
    """ringbuf's advantage over a peer, as the table reads it."""
    return f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"


def _pct(share: float) -> str:
    return f"{100 * share:.2f}%"


def table(r: dict) -> str:
    m, ratio = r["medians"], r["ratios"]
    ring = m["ring"]
    rows = [
        "| contender (64-byte messages, 2 processes) | messages/s | ringbuf is |",
        "|---|---:|---:|",
        f"| ringbuf `push`/`pop` | {ring:,.0f} | 1x |",
        f"| faster-fifo `put`/`get` (pickles each message, its default) | "
        f"{m['faster_fifo']:,.0f} | {_x(ratio['ring / faster_fifo'])} |",
        f"| multiprocessing.Pipe `send_bytes`/`recv_bytes` | {m['mp_pipe']:,.0f} | "
        f"{_x(ratio['ring / mp_pipe'])} |",
        f"| multiprocessing.Queue `put`/`get` | {m['mp_queue']:,.0f} | "
        f"{_x(ratio['ring / mp_queue'])} |",
    ]
    if "c_single" in m:
        rows.append(f"| ceiling: the same ring driven from C, one at a time | "
                    f"{m['c_single']:,.0f} | {ratio['ring / c_single']:.2f}x of it |")
    rows += [
        "",
        f"| batches of {BATCH} (64-byte messages, 2 processes) | messages/s | ringbuf is |",
        "|---|---:|---:|",
        f"| ringbuf numpy `push_many`/`pop_many_into` | {m['ring_batch']:,.0f} | 1x |",
    ]
    if "ff_batch" in m:
        rows.append(f"| faster-fifo `put_many`/`get_many` (each message pickled) | "
                    f"{m['ff_batch']:,.0f} | {_x(ratio['ring_batch / ff_batch'])} |")
    if "pipe_batch" in m:
        rows.append(f"| multiprocessing.Pipe, {BATCH} messages per `send_bytes`/"
                    f"`recv_bytes_into` | {m['pipe_batch']:,.0f} | "
                    f"{_x(ratio['ring_batch / pipe_batch'])} |")
    if "c_batch" in m:
        rows.append(f"| ceiling: the same ring driven from C, batches of {BATCH} | "
                    f"{m['c_batch']:,.0f} | {ratio['ring_batch / c_batch']:.2f}x of it |")
    rows += [
        "",
        "| round trip (ping-pong, 64 bytes) | median µs | p99 µs | ringbuf is (median) |",
        "|---|---:|---:|---:|",
        f"| ringbuf ring pair | {m['ring_rtt_median_us']:.2f} | {m['ring_rtt_p99_us']:.2f} | 1x |",
        f"| multiprocessing.Pipe (duplex) | {m['pipe_rtt_median_us']:.2f} | "
        f"{m['pipe_rtt_p99_us']:.2f} | {_x(ratio['pipe rtt / ring rtt'])} |",
    ]
    if "faster_fifo_idle_cpu" in m:
        rows += [
            "",
            "| consumer blocked on an empty channel (same window) | CPU, psutil "
            "`cpu_times` | CPU, scheduler runtime |",
            "|---|---:|---:|",
            f"| ringbuf `pop(timeout=None)` | {_pct(m['ring_idle_cpu'])} | "
            f"{_pct(m['ring_idle_cpu_sched'])} |",
            f"| faster-fifo `get` | {_pct(m['faster_fifo_idle_cpu'])} | "
            f"{_pct(m['faster_fifo_idle_cpu_sched'])} |",
            f"| multiprocessing.Pipe `recv_bytes` | {_pct(m['mp_pipe_idle_cpu'])} | "
            f"{_pct(m['mp_pipe_idle_cpu_sched'])} |",
        ]
    else:
        rows += ["", f"A consumer blocked on an empty ring used {_pct(m['ring_idle_cpu'])} "
                     "of a CPU."]
    if r.get("targets"):
        rows += ["", "| target | measured | met |", "|---|---:|:---:|"]
        for key, (value, met) in r["targets"].items():
            op, bound = TARGETS[key]
            rows.append(f"| {_target_label(key, op, bound)} | {_fmt(key, value)} | "
                        f"{'yes' if met else '**NO**'} |")
    mach = r["machine"]
    usable = mach.get("cpus_usable", mach["cpus"])
    rows += [
        "",
        f"Medians of {r['rounds']} interleaved rounds"
        + (f" (scale {r['scale']:g})" if "scale" in r else "")
        + f" on {mach['cpus']} CPUs"
        + (f" ({usable} usable)" if usable != mach["cpus"] else "")
        + f" ({mach['cpu']}), Linux {mach['kernel']}, Python {mach['python']}, "
        f"numpy {mach['numpy']}, cffi {mach['cffi']}, faster-fifo {mach['faster_fifo']}"
        + (f", load average {mach['loadavg']:.2f} at start" if "loadavg" in mach else "")
        + f". Reproduce: `{reproduce(r)}`.",
    ]
    return "\n".join(rows)


def reproduce(r: dict) -> str:
    """The command that measures this again (flags only where not default)."""
    flags = ""
    if r.get("rounds", 5) != 5:
        flags += f" --rounds {r['rounds']}"
    if r.get("scale", 0.5) != 0.5:
        flags += f" --scale {r['scale']:g}"
    return REPRODUCE + flags


_LABELS = {
    "ring / faster_fifo": "ringbuf / faster-fifo, one at a time",
    "ring / mp_pipe": "ringbuf / multiprocessing.Pipe, one at a time",
    "ring_rtt_median_us": "ring pair round trip, median",
    "ring_batch": "numpy batches",
    "ring_idle_cpu": "blocked consumer, psutil `cpu_times`",
    "ring_idle_cpu_sched": "blocked consumer, scheduler runtime",
}


def _target_label(key: str, op: str, bound: float) -> str:
    sign = {">=": "≥", "<=": "≤", "<": "<"}[op]
    if key.startswith("ring / "):
        b = f"{bound:g}x"
    elif key.endswith("_us"):
        b = f"{bound:g} µs"
    elif "idle" in key:
        b = f"{100 * bound:g}% of a CPU"
    else:
        b = f"{bound / 1e6:g} M messages/s"
    return f"{_LABELS.get(key, key)} {sign} {b}"


def _fmt(key: str, value: float) -> str:
    if key.startswith("ring / "):
        return f"{value:.1f}x"
    if key.endswith("_us"):
        return f"{value:.2f} µs"
    if "idle" in key:
        return _pct(value)
    return f"{value / 1e6:.1f} M/s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ring_report", description=__doc__)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--scale", type=float, default=0.5,
                    help="x the default message counts (default 0.5)")
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = ap.parse_args(argv)
    r = compare(rounds=args.rounds, scale=args.scale)
    print(json.dumps(r) if args.json else table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
