"""`python -m bench.ring_report`: the ring against its peers as a Markdown
table (what the README shows), measured in one run."""

from __future__ import annotations

import sys

from bench.peers import compare


def table(r: dict) -> str:
    m, ratio = r["medians"], r["ratios"]
    ring = m["ring"]
    rows = [
        "| contender (64-byte messages, 2 processes) | messages/s | ringbuf is |",
        "|---|---:|---:|",
        f"| ringbuf `push`/`pop` | {ring:,.0f} | 1x |",
        f"| faster-fifo `put`/`get` (pickles each message, its default) | {m['faster_fifo']:,.0f} | {ratio['ring / faster_fifo']:.1f}x faster |",
        f"| multiprocessing.Pipe `send_bytes`/`recv_bytes` | {m['mp_pipe']:,.0f} | {ratio['ring / mp_pipe']:.1f}x faster |",
        f"| multiprocessing.Queue `put`/`get` | {m['mp_queue']:,.0f} | {ratio['ring / mp_queue']:.1f}x faster |",
        f"| ringbuf numpy batches (`push_many`/`pop_many_into`, 4096) | {m['ring_batch']:,.0f} | — |",
        f"| ceiling: the same ring from C, one at a time | {m['c_single']:,.0f} | "
        f"{ring / m['c_single']:.2f}x of it |",
        f"| ceiling: the same ring from C, batches of 4096 | {m['c_batch']:,.0f} | "
        f"batches reach {m['ring_batch'] / m['c_batch']:.2f}x of it |",
        "",
        "| round trip (ping-pong) | median µs | p99 µs |",
        "|---|---:|---:|",
        f"| ringbuf ring pair | {m['ring_rtt_median_us']:.2f} | {m['ring_rtt_p99_us']:.2f} |",
        f"| multiprocessing.Pipe | {m['pipe_rtt_median_us']:.2f} | {m['pipe_rtt_p99_us']:.2f} |",
        "",
        f"A consumer blocked on an empty ring used {100 * m['ring_idle_cpu']:.2f}% of a CPU.",
    ]
    mach = r["machine"]
    rows += [
        "",
        f"Medians of {r['rounds']} interleaved rounds on {mach['cpus']} CPUs ({mach['cpu']}), "
        f"Linux {mach['kernel']}, Python {mach['python']}, numpy {mach['numpy']}, "
        f"cffi {mach['cffi']}, faster-fifo {mach['faster_fifo']}. "
        "Reproduce: `.venv/bin/python -m bench.ring_report`.",
    ]
    return "\n".join(rows)


def main() -> int:
    print(table(compare(rounds=5, scale=0.5)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
