"""`procmgr cluster ...`: the cluster from a shell (procmgr/cli.py hands
these over; the parser is built without importing Ray).

    procmgr cluster up --address HOST:PORT     # an agent and runtime on every node
    procmgr cluster spawn -- ./job --part 3    # prints the domain's token
    procmgr cluster wait TOKEN; procmgr cluster kill TOKEN; procmgr cluster logs -f TOKEN
    procmgr cluster ps                         # every node's domains; dead nodes said
    procmgr cluster down                       # every node's runtime ended

As the other commands: --json, one line on stderr for an error, `wait`
exiting with the domain's status (128+N for a signal N).
"""

from __future__ import annotations

import argparse
import json
import sys

from procmgr.cli import CliError

ADDRESS_HELP = ('the Ray cluster: HOST:PORT of its head, "auto" (the one this machine '
                'runs; default) or "local" (start one for this command alone)')
JSON_HELP = "print JSON instead of a table"
TOKEN_HELP = "the domain's token (NODE/RUNTIME/ID:NONCE), as `cluster spawn` printed it"


def add_parser(sub) -> None:
    """`cluster` and its commands under the main parser's ``sub``."""
    top = sub.add_parser("cluster", help="a runtime on every node of a Ray cluster "
                         "(pip install 'procmgr[cluster]')",
                         description="Programs on every node of a Ray cluster: an agent "
                         "on each node owns a procmgr runtime of its cores "
                         "(docs/cluster.md).")
    commands = top.add_subparsers(dest="cluster_command", required=True,
                                  help="what to do across the cluster")

    def add(name, func, help, example):
        p = commands.add_parser(name, help=help, description=help, epilog=f"example: {example}")
        p.add_argument("--address", default="auto", help=ADDRESS_HELP)
        p.add_argument("--json", action="store_true", help=JSON_HELP)
        p.set_defaults(func=_in_words(func))
        return p

    p = add("up", cmd_up, "start an agent, and a runtime of the node's cores, on every node",
            "procmgr cluster up --address 10.0.0.1:6379")
    p.add_argument("--cores", type=int, help="cores of each runtime (default: the node's CPUs "
                   "as Ray counts them)")
    p.add_argument("--resource", help="only nodes with this Ray resource")
    p.add_argument("--containment", choices=("auto", "cgroup", "tree"), default="auto",
                   help="what a kill reaches on each node (as `procmgr up`)")
    add("ps", cmd_ps, "every node's live domains; a dead node says so", "procmgr cluster ps")
    p = add("spawn", cmd_spawn, "start a program on a node: print its token",
            "procmgr cluster spawn --node 3f2a... -- ./job")
    p.add_argument("--node", help="the node's id, or the start of it (default: least loaded)")
    p.add_argument("--core", type=int, help="the node's core (default: least loaded)")
    p.add_argument("program", nargs=argparse.REMAINDER,
                   help="the program and its arguments, after --")
    for name, func, help in (("wait", cmd_wait, "wait for a domain: its exit status"),
                             ("kill", cmd_kill, "end a domain and everything it forked"),
                             ("logs", cmd_logs, "what a domain wrote to stdout (or --stderr)")):
        p = add(name, func, help, f"procmgr cluster {name} TOKEN")
        p.add_argument("token", help=TOKEN_HELP)
        if name == "logs":
            p.add_argument("--stderr", action="store_true", help="its stderr, not stdout")
            p.add_argument("--tail", type=int, help="only the last N lines")
            p.add_argument("-f", "--follow", action="store_true",
                           help="and each new piece as it is written, until the domain ends")
    add("down", cmd_down, "end every node's runtime (its domains killed) and agent",
        "procmgr cluster down")


def _in_words(func):
    """The command, bad input it finds (a TypeError or ValueError, here
    or on the node) said in one line, as procmgr/cli.py says its own."""
    def command(args) -> int:
        try:
            return func(args)
        except (TypeError, ValueError) as e:
            raise CliError(str(e)) from None
    command.__doc__ = func.__doc__
    return command


def _connect(args, **options):
    """The cluster at --address; `up` and `spawn` start agents where none
    run, the others only look (a `ps` after `down` starts nothing)."""
    try:
        from procmgr.cluster import connect
        return connect(args.address, **options)
    except ImportError as e:
        raise CliError(str(e)) from None
    except ValueError as e:           # what Ray says of an address it cannot use
        raise CliError(f"cannot join the Ray cluster at {args.address!r}: {e}") from None


def _emit(args, data, text: str) -> None:
    print(json.dumps(data) if args.json else text)


def _token(cluster, text: str):
    try:
        return cluster.domain(text)
    except ValueError as e:
        raise CliError(str(e)) from None


def cmd_up(args) -> int:
    with _connect(args, cores=args.cores, resource=args.resource,
                  containment=args.containment) as c:
        nodes = c.nodes()
    for n in nodes:            # an agent running already keeps what it was started with
        if n.alive and ((args.cores and n.cores != args.cores) or
                        args.containment not in ("auto", n.containment)):
            print(f"procmgr: node {n.node[:12]} runs already with {n.cores} cores, "
                  f"{n.containment} containment (`procmgr cluster down` first to change "
                  f"them)", file=sys.stderr)
    rows = [{"node": n.node, "host": n.host, "alive": n.alive, "runtime": n.runtime,
             "cores": n.cores, "containment": n.containment, "live": sum(n.live),
             "why": n.why} for n in nodes]
    _emit(args, rows, "\n".join(
        f"{r['node'][:12]}  {r['host'] or '?':<16} "
        f"{'up' if r['alive'] else 'DEAD'}  {r['cores']} cores  {r['live']} live  "
        f"{r['containment'] or ''}  {r['why'] or ''}".rstrip() for r in rows) or "no nodes")
    return 0


def cmd_ps(args) -> int:
    with _connect(args, start_agents=False) as c:
        rows = c.ps()
    _emit(args, rows, "\n".join(
        f"{r['node']}  {r['host'] or '?':<16} {r.get('id', ''):>6}  {r['state']:<10} "
        f"{','.join(map(str, r.get('pids', [])))}  "
        f"{' '.join(r.get('argv', [])) or r.get('why') or ''}" for r in rows) or "no domains")
    return 0


def cmd_spawn(args) -> int:
    program = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not program:
        raise CliError("nothing to spawn: give the program after --")
    with _connect(args) as c:
        node = _node(c, args.node)
        d = c.spawn(program, node=node, core=args.core)
    _emit(args, {"token": d.token, "node": d.node, "core": d.core, "id": d.id, "pid": d.pid},
          d.token)
    return 0


def _node(c, given: str | None) -> str | None:
    """A node named by (the start of) its id."""
    if given is None:
        return None
    found = [n.node for n in c.nodes() if n.node.startswith(given)]
    if len(found) != 1:
        raise CliError(f"{len(found) or 'no'} nodes' ids start with {given!r}")
    return found[0]


def cmd_wait(args) -> int:
    with _connect(args, start_agents=False) as c:
        status = c.wait(_token(c, args.token))
    _emit(args, {"status": status}, str(status))
    return 128 - status if status < 0 else status & 0xFF


def cmd_kill(args) -> int:
    with _connect(args, start_agents=False) as c:
        c.kill(_token(c, args.token))
    _emit(args, {"killed": True}, "killed")
    return 0


def cmd_logs(args) -> int:
    stream = "stderr" if args.stderr else "stdout"
    if args.follow:
        with _connect(args, start_agents=False) as c:
            for piece in c.follow(_token(c, args.token), stream, tail=args.tail):
                if args.json:
                    _emit(args, {"output": piece.decode("utf-8", "replace")}, "")
                else:
                    sys.stdout.buffer.write(piece)
                    sys.stdout.buffer.flush()
        return 0
    with _connect(args, start_agents=False) as c:
        data = c.output(_token(c, args.token), stream, tail=args.tail)
    if args.json:
        _emit(args, {"output": data.decode("utf-8", "replace")}, "")
    else:
        sys.stdout.buffer.write(data)
    return 0


def cmd_down(args) -> int:
    with _connect(args, start_agents=False) as c:
        c.down()
    _emit(args, {"down": True}, "every node's runtime ended")
    return 0
