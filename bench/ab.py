"""Two runtimes side by side, spawn + wait one at a time, in finely
interleaved blocks: `python -m bench.ab --b PYTHONPATH=/other/checkout`.

For a change worth a few percent. This machine's speed drifts by ±10%
within seconds, and rounds of 400 spawns measured one after the other
could not tell such a change from nothing: the same pair gave B/A 1.04x and
0.99x in two runs of 32 and 24 rounds. Blocks of 50 spawns, taken A, B, raw
then raw, B, A and so on, put every block next to the conditions of its
neighbours. The same pair then gave 0.97x with a 96% interval of
0.97-0.99x, in half a minute; A against itself 1.00x (0.98-1.01x).

With ``--control-plane`` the runtimes use simulated dispatchers and a
block is spawn + kill + wait of ``block`` domains, pipelined (256 in
flight: bench/pipeline.py), in requests/s: the manager's control plane
alone. There is no raw side then.

Each side is a Runtime started with its own environment (``--a`` / ``--b``
NAME=VALUE, repeatable). That is a switch the code under test reads, or
PYTHONPATH naming another checkout, built in place. The runtimes start from
a scratch directory, so that the current one, first on a `python -m`
process's path, does not shadow PYTHONPATH. The client side is this
process's, the same for both.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import tempfile

import procmgr
from bench.scale import control_plane_rate
from bench.spawn import interleaved, raw_rate, runtime_rate
from bench.stats import median_interval


def _environments(a: list[str], b: list[str], block: int, blocks: int) -> dict:
    """The two sides' environments from NAME=VALUE lists; ValueError, saying
    what is wrong, for a malformed one or a size below 1."""
    if block < 1 or blocks < 1:
        raise ValueError("block and blocks must be at least 1")
    envs = {}
    for side, assignments in (("a", a), ("b", b)):
        envs[side] = {}
        for assignment in assignments:
            name, sep, value = assignment.partition("=")
            if not sep or not name:
                raise ValueError(f"{assignment!r} is not NAME=VALUE")
            envs[side][name] = value
    return envs


@contextlib.contextmanager
def _environment(env: dict[str, str]):
    """os.environ with ``env`` added, the current directory a scratch one;
    both put back after."""
    saved, cwd = dict(os.environ), os.getcwd()
    with tempfile.TemporaryDirectory(prefix="procmgr-ab-") as scratch:
        try:
            os.environ.update(env)
            os.chdir(scratch)
            yield
        finally:
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(saved)


def compare(a: list[str], b: list[str], block: int = 50, blocks: int = 200,
            cores: int = 2, control_plane: bool = False,
            containment: tuple[str, str] = ("auto", "auto")) -> dict:
    """Rates per block of A, B and raw; the per-block ratios' medians with
    their intervals (bench/stats.py). ``containment``: each side's
    (procmgr/containment.py; "auto" is not passed on, for a side whose
    runtime predates the option)."""
    envs = _environments(a, b, block, blocks)
    with contextlib.ExitStack() as stack:
        sides = {}
        for (name, env), contained in zip(envs.items(), containment):
            options = {} if contained == "auto" else {"containment": contained}
            with _environment(env):
                rt = stack.enter_context(procmgr.Runtime(cores=cores, simulate=control_plane,
                                                         **options))
            sides[name] = rt.client()
        if control_plane:
            measures = {name: functools.partial(control_plane_rate, pm, cores, block)
                        for name, pm in sides.items()}
        else:
            measures = {name: functools.partial(runtime_rate, pm, block, 1, cores)
                        for name, pm in sides.items()}
            measures["raw"] = functools.partial(raw_rate, block, 1)
        for name in sides:
            measures[name]()                                         # warm
        rates = interleaved(measures, blocks)
    ratios = {"b/a": [y / x for x, y in zip(rates["a"], rates["b"])]}
    if not control_plane:
        ratios |= {"a/raw": [x / r for x, r in zip(rates["a"], rates["raw"])],
                   "b/raw": [y / r for y, r in zip(rates["b"], rates["raw"])]}
    return {"rates": {k: statistics.median(v) for k, v in rates.items()},
            "ratios": {k: (statistics.median(v), median_interval(v)) for k, v in ratios.items()},
            "a": a + [f"containment={containment[0]}"], "b": b + [
                f"containment={containment[1]}"], "block": block, "blocks": blocks,
            "cores": cores, "control_plane": control_plane}


def table(r: dict) -> str:
    what = ("control plane, spawn + kill + wait pipelined (simulated)" if r["control_plane"]
            else "spawn + wait one at a time")
    lines = [f"| {what} | median | interval |", "|---|---:|---:|"]
    for key, (median, (low, high, coverage)) in r["ratios"].items():
        lines.append(f"| {key} | {median:.3f}x | {low:.3f}–{high:.3f}x ({coverage:.0%}) |")
    rates = r["rates"]
    raw = "" if r["control_plane"] else f"; raw {rates['raw']:,.0f}/s"
    unit = "domains (3 requests each; rates in requests/s)" if r["control_plane"] else "spawns"
    lines.append(f"\nA: {' '.join(r['a']) or '(as is)'}, {rates['a']:,.0f}/s; "
                 f"B: {' '.join(r['b']) or '(as is)'}, {rates['b']:,.0f}/s{raw} (medians per "
                 f"block). {r['blocks']} blocks of {r['block']} {unit} each, interleaved; "
                 f"{r['cores']} cores.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", action="append", default=[], metavar="NAME=VALUE",
                    help="environment of runtime A (repeatable)")
    ap.add_argument("--b", action="append", default=[], metavar="NAME=VALUE",
                    help="environment of runtime B (repeatable)")
    ap.add_argument("--block", type=int, default=50, help="spawns per block")
    ap.add_argument("--blocks", type=int, default=200, help="blocks per side")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--control-plane", action="store_true",
                    help="simulated dispatchers, spawn + kill + wait pipelined (requests/s)")
    for side in ("a", "b"):
        ap.add_argument(f"--{side}-containment", default="auto",
                        choices=("auto", "cgroup", "tree"),
                        help=f"what a kill reaches in runtime {side.upper()} "
                             "(procmgr/containment.py)")
    args = ap.parse_args(argv)
    try:
        _environments(args.a, args.b, args.block, args.blocks)
    except ValueError as e:
        ap.error(str(e))        # before any runtime starts
    print(table(compare(args.a, args.b, args.block, args.blocks, args.cores,
                        args.control_plane, (args.a_containment, args.b_containment))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
