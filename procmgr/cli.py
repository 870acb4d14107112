"""`procmgr`: the runtime from a shell.

    procmgr up --cores 4 --detach        # start a runtime in the background
    procmgr spawn --core 1 -- /bin/sleep 30
    procmgr run -- /bin/echo hi          # run it here: its output, its status
    procmgr ps                           # domains, states, cores, pids, CPU, memory
    procmgr logs ID -f                   # a domain's captured output, as it comes
    procmgr events --json                # what happens to domains and programs
    procmgr kill TOKEN; procmgr wait TOKEN
    procmgr supervise --program web -- ./server   # kept running; procmgr stop web
    procmgr down
    procmgr cluster up|ps|spawn|wait|kill|logs|down   # on every node of a Ray cluster

Every query takes --json. Errors are one line on stderr and a non-zero exit
code, never a traceback. `wait` exits with the domain's exit status (a
death by signal N as 128+N, as shells report it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil

import ringbuf
from procmgr import containment
from procmgr.client import config, logs
from procmgr.client.client import Domain
from procmgr.protocol import State
from procmgr.errors import ProcMgmtError
from procmgr.osutil import remove_dead_runtime_dir, runtime_dir, runtime_dir_in_use
from procmgr.client.runtime import Runtime, RuntimeNotFound, connect

DEFAULT_NAME = "default"
READY_TIMEOUT = 30.0


class CliError(Exception):
    """Something the user asked for cannot be done; the message says why."""


# ---- up / down ----------------------------------------------------------------


def cmd_up(args) -> int:
    if runtime_dir_in_use(runtime_dir(args.name)):
        raise CliError(f"a runtime named {args.name!r} is already running")
    # The file is read and checked first: a bad one starts nothing.
    declared = _declared(args.config, args.cores) if args.config else None
    if args.detach:
        _up_detached(args)
        if declared is not None:
            with _client(args) as pm:
                _say_applied(args.config, config.apply(pm, declared))
        return 0
    try:
        rt = Runtime(cores=args.cores, pending=args.pending, name=args.name,
                     containment=args.containment)
    except OSError as e:            # cgroup containment asked for, and not to be had
        raise CliError(str(e)) from None
    rt.start()
    with open(_pidfile(args.name), "w") as f:
        f.write(str(os.getpid()))
    print(f"runtime {args.name!r} up: {args.cores} cores, pending={args.pending}, "
          f"containment={rt.containment_mode} (Ctrl-C stops it)", flush=True)
    try:
        if declared is not None:
            with rt.client() as pm:
                _say_applied(args.config, config.apply(pm, declared))
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        stop = threading.Event()
        shown = threading.Thread(target=_show_runtime_log, args=(args.name, stop), daemon=True)
        shown.start()
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        stop.set()
        shown.join(timeout=2)
    finally:
        rt.close()
        try:
            os.unlink(_pidfile(args.name))
        except FileNotFoundError:
            pass
        print(f"runtime {args.name!r} down", flush=True)
    return 0


def _declared(path: str, cores: int) -> list:
    try:
        return config.load(path, cores)
    except config.ConfigError as e:
        raise CliError(str(e)) from None


def _say_applied(path: str, done: dict) -> None:
    said = ", ".join(f"{what} {', '.join(names)}" for what, names in done.items() if names)
    print(f"{path}: {said or 'nothing to do'}", flush=True)


def cmd_reload(args) -> int:
    """Apply a changed file to a running runtime: the new started, the
    removed stopped and forgotten, the changed started again."""
    with _client(args) as pm:
        cores = len(pm.stats()["cores"])
        done = config.apply(pm, _declared(args.config, cores))
    if args.json:
        print(json.dumps(done))
    else:
        _say_applied(args.config, done)
    return 0


def _show_runtime_log(name: str, stop: threading.Event) -> None:
    """In the foreground, what the manager and workers say (their runtime
    log) is shown on our stderr as well."""
    try:
        f = open(os.path.join(runtime_dir(name), "runtime.log"), "rb")
    except FileNotFoundError:
        return
    with f:
        while True:
            stopping = stop.wait(0.2)
            data = f.read()           # (once more after the stop: the last words)
            if data:
                sys.stderr.buffer.write(data)
                sys.stderr.flush()
            if stopping:
                return


def _up_detached(args) -> int:
    cmd = [sys.executable, "-m", "procmgr", "up", "--cores", str(args.cores),
           "--name", args.name, "--pending", args.pending, "--containment", args.containment]
    daemon = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    line = daemon.stdout.readline()   # bounded by the daemon: up or exited
    daemon.stdout.close()
    if not line.startswith(b"runtime"):
        daemon.wait(timeout=READY_TIMEOUT)
        raise CliError(f"runtime {args.name!r} did not start")
    print(f"runtime {args.name!r} up in the background (pid {daemon.pid})")
    return 0


def _pidfile(name: str) -> str:
    """Where `up` records its pid for `down`: beside the runtime's directory
    (which belongs to the manager and goes away with it)."""
    return runtime_dir(name) + ".pid"


def cmd_down(args) -> int:
    try:
        with open(_pidfile(args.name)) as f:
            pid = int(f.read())
    except (FileNotFoundError, ValueError):
        raise CliError(f"no procmgr runtime named {args.name!r} is running") from None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        raise CliError(f"runtime {args.name!r} is gone already; "
                       "`procmgr cleanup` removes what it left") from None
    deadline = time.monotonic() + READY_TIMEOUT
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        try:
            psutil.Process(pid).wait(timeout=0.5)
        except (psutil.TimeoutExpired, psutil.NoSuchProcess):
            pass
    if psutil.pid_exists(pid):
        raise CliError(f"runtime {args.name!r} did not stop within {READY_TIMEOUT:.0f} s")
    print(f"runtime {args.name!r} down")
    return 0


# ---- domains ------------------------------------------------------------------


def _client(args):
    return connect(args.name)


def _domain(token: str) -> Domain:
    try:
        return Domain.from_token(token)
    except ValueError as e:
        raise CliError(str(e)) from None


def _placed(args) -> dict:
    """--env and --cwd as spawn's options: the variables added to the
    runtime's environment (not this shell's, copied whole: that one is not
    the runtime's, and would not fit a spawn), and the directory it starts
    in -- this shell's, unless --cwd says another, as a command run here."""
    extra = {}
    for item in args.env or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--env {item!r} is not KEY=VALUE")
        extra[key] = value
    placed = {"env_extra": extra or None, "cwd": args.cwd or os.getcwd()}
    limits = {}
    for item in getattr(args, "limit", None) or ():
        name, sep, value = item.partition("=")
        soft, colon, hard = value.partition(":")
        try:
            pair = tuple(None if v == "unlimited" else int(v)
                         for v in (soft, hard if colon else soft))
        except ValueError:
            pair = ()
        if not sep or not name or not pair:
            raise CliError(f"--limit {item!r} is not NAME=N, NAME=SOFT:HARD or NAME=unlimited")
        limits[name] = pair
    if limits:
        placed["limits"] = limits
    for key in ("user", "group"):
        if getattr(args, key, None) is not None:
            value = getattr(args, key)
            placed[key] = int(value) if value.isdigit() else value
    if getattr(args, "umask", None) is not None:
        try:
            placed["umask"] = int(args.umask, 8)
        except ValueError:
            raise CliError(f"--umask {args.umask!r} is not an octal number") from None
    return placed


def _process_options(p) -> None:
    """spawn's and run's limits and identity (Client.spawn's)."""
    p.add_argument("--limit", action="append", metavar="NAME=VALUE",
                   help="a limit set before it starts, by prlimit's names: as, cpu, nofile, "
                        "nproc, core, fsize (N, SOFT:HARD or unlimited; repeat for more)")
    p.add_argument("--user", help="the user it runs as (a runtime running as root)")
    p.add_argument("--group", help="the group it runs as (a runtime running as root)")
    p.add_argument("--umask", metavar="OCTAL", help="its umask, e.g. 027")


_WHERE = {"log": logs.LOG, "null": logs.DEVNULL, "inherit": logs.INHERIT,
          "stdout": logs.STDOUT}


def _streams(args) -> dict:
    """--stdin/--stdout/--stderr: a word (log, null, stdout) or a path."""
    streams = {}
    for name in ("stdin", "stdout", "stderr"):
        value = getattr(args, name, None)
        if value is not None:
            streams[name] = _WHERE.get(value, value)
    if getattr(args, "append", False):
        streams["append"] = True
    return streams


def cmd_spawn(args) -> int:
    if not args.program:
        raise CliError("nothing to spawn: give the program after --")
    try:
        streams = _streams(args)
        with _client(args) as pm:
            d = pm.spawn(args.program, core=args.core, **_placed(args), **streams)
    except (ValueError, TypeError) as e:
        raise CliError(str(e)) from None
    _emit(args, {"id": d.id, "token": d.token, "core": d.core, "pid": d.pid},
          f"{d.id} {d.token}")
    return 0


def cmd_run(args) -> int:
    """The program runs in the runtime with our stdout and stderr (it writes
    to them itself); we wait and exit with its status. Ctrl-C kills it."""
    if not args.program:
        raise CliError("nothing to run: give the program after --")
    with _client(args) as pm:
        try:
            d = pm.spawn(args.program, core=args.core, **_placed(args), stdout=logs.INHERIT,
                         stderr=logs.INHERIT)
        except (ValueError, TypeError) as e:
            raise CliError(str(e)) from None
        try:
            status = pm.wait(d)
        except BaseException:
            pm.kill(d)
            raise
    return 128 - status if status < 0 else status & 0xFF


def cmd_logs(args) -> int:
    streams = ["stdout", "stderr"] if args.both else ["stderr" if args.stderr else "stdout"]
    sinks = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer if args.both
             else sys.stdout.buffer}
    ref = _domain(args.token) if ":" in args.token else _domain_id(args.token)
    with _client(args) as pm:
        try:
            if not args.follow:
                for stream in streams:
                    sinks[stream].write(pm.output(ref, stream, tail=args.tail))
                    sinks[stream].flush()
                return 0
            for stream, data in pm.follow_streams(ref, streams, tail=args.tail):
                sinks[stream].write(data)
                sinks[stream].flush()
            return 0
        except ValueError as e:
            raise CliError(str(e)) from None


def _domain_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise CliError(f"{text!r} is neither a domain id nor a token (ID:NONCE)")
    return int(text)


def cmd_span(args) -> int:
    with _client(args) as pm:
        pid = pm.span(_domain(args.token), args.core)
    _emit(args, {"pid": pid, "core": args.core}, str(pid))
    return 0


def _signal(name: str) -> int:
    """A signal as the shell names it: TERM, SIGTERM, term or 15."""
    if name.isdigit():
        return int(name)
    key = name.upper()
    try:
        return signal.Signals[key if key.startswith("SIG") else "SIG" + key]
    except KeyError:
        raise CliError(f"{name!r} is not a signal (TERM, HUP, INT, KILL, USR1, 15, ...)") \
            from None


def cmd_kill(args) -> int:
    sig = None if args.signal is None else _signal(args.signal)
    with _client(args) as pm:
        try:
            # Its grace may be long: the wait for the answer is bounded by it.
            pm.kill(_domain(args.token), signal=sig, grace=args.grace,
                    timeout=None if args.grace is None else args.grace + 30)
        except ValueError as e:
            raise CliError(str(e)) from None
    return 0


def cmd_signal(args) -> int:
    with _client(args) as pm:
        try:
            pm.signal(_domain(args.token), _signal(args.signal))
        except ValueError as e:
            raise CliError(str(e)) from None
    return 0


def cmd_wait(args) -> int:
    with _client(args) as pm:
        status = pm.wait(_domain(args.token), nohang=args.nohang)
    _emit(args, {"running": status is None, "status": status},
          "running" if status is None else str(status))
    if status is None:
        return 0
    return 128 - status if status < 0 else status & 0xFF


def cmd_supervise(args) -> int:
    if not args.program:
        raise CliError("nothing to supervise: give the program after --")
    try:
        with _client(args) as pm:
            info = pm.supervise(args.program, name=args.program_name, core=args.core,
                                restart=args.restart, backoff=args.backoff,
                                backoff_max=args.backoff_max,
                                max_restarts=None if args.max_restarts < 0 else
                                args.max_restarts, period=args.period, **_placed(args))
    except (ValueError, TypeError) as e:
        raise CliError(str(e)) from None
    _emit(args, _program_row(info), f"{info.name} {info.state}")
    return 0


def _program_action(action: str):
    """`procmgr start|stop|restart NAME`, as supervisorctl's; NAME:* is
    every copy of a file's numprocs group (NAME:0, NAME:1, ...)."""
    def run(args) -> int:
        with _client(args) as pm:
            call = {"start": pm.start_program, "stop": pm.stop_program,
                    "restart": pm.restart_program}[action]
            names = [args.program_name]
            if args.program_name.endswith(":*"):
                group = args.program_name[:-1]
                names = [p["name"] for p in pm.programs() if p["name"].startswith(group)]
                if not names:
                    raise CliError(f"no supervised program in group {args.program_name!r}")
            rows = [_program_row(call(name)) for name in names]
        _emit(args, rows if len(rows) > 1 else rows[0],
              "\n".join(f"{r['name']} {r['state']}" for r in rows))
        return 0
    return run


def _program_row(info) -> dict:
    return {"name": info.name, "state": info.state, "core": info.core, "pid": info.pid,
            "restarts": info.restarts, "uptime": info.uptime, "last_exit": info.last_exit,
            "error": info.error,
            "domain": None if info.domain is None else info.domain.token}


def _programs_table(rows: list[dict]) -> str:
    lines = [f"{'PROGRAM':<20} {'STATE':<9} {'CORE':>4} {'PID':>7} {'RESTARTS':>8} "
             f"{'UPTIME':>9} {'STARTED':>10}  LAST EXIT"]
    for r in rows:
        last = r.get("last_exit")
        how = "" if not last else ("killed" if last["killed"] else
                                   f"signal {last['status']}" if last["signaled"] else
                                   f"exit {last['status']}")
        up = "" if r.get("uptime") is None else f"{r['uptime']:.1f}s"
        lines.append(f"{r['name']:<20} {r['state']:<9} {r['core']:>4} {r['pid'] or '':>7} "
                     f"{r['restarts']:>8} {up:>9} {_ago(r.get('started')):>10}  {how}")
    return "\n".join(lines)


def _info(pm, ident: int) -> dict:
    """A domain's row: "pids" its dispatchers, "processes" every live
    process of it (what they forked too: Client.processes), over which
    CPU and memory are summed while it runs; once it has ended, what its
    dispatchers' ends said they used (DomainInfo)."""
    info = pm.status(ident)
    row = {"id": info.id, "state": info.state.name, "cores": info.cores, "pids": info.pids,
           "argv": info.argv, "exit_status": info.exit_status, "signaled": info.signaled,
           "killed": info.killed, "started": info.started, "ended": info.ended,
           "processes": [], "cpu_s": None, "rss_mb": None, "wall_s": info.wall}
    if info.cpu_user is not None:
        row["cpu_s"] = round(info.cpu_user + info.cpu_system, 3)
        row["rss_mb"] = None if info.max_rss is None else round(info.max_rss / 2**20, 1)
    if info.state == State.RUNNING:
        cpu, rss = 0.0, 0
        row["processes"] = containment.processes_of(info.pids)
        for pid in row["processes"]:
            try:
                p = psutil.Process(pid)
                t = p.cpu_times()
                cpu += t.user + t.system
                rss += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        row["cpu_s"], row["rss_mb"] = round(cpu, 2), round(rss / 2**20, 1)
    return row


def cmd_events(args) -> int:
    """Events as they happen, one line (or JSON object) each, until
    --count were printed, --timeout passed without one, or Ctrl-C."""
    from procmgr.client.events import check_kinds

    kinds = None
    if args.kind:
        try:
            kinds = check_kinds(k.strip() for word in args.kind for k in word.split(",")
                                if k.strip())
        except ValueError as e:
            raise CliError(str(e)) from None
    if args.count is not None and args.count < 1:
        raise CliError("--count is at least 1")
    printed = 0
    with _client(args) as pm:
        for event in pm.events(after=args.after, kinds=kinds, timeout=args.timeout):
            print(json.dumps(event.as_dict()) if args.json else _event_line(event), flush=True)
            printed += 1
            if args.count is not None and printed >= args.count:
                return 0
    return 0


def _event_line(event) -> str:
    """One event for the terminal: when, its seq, what, and about what."""
    when = time.strftime("%H:%M:%S", time.localtime(event.time)) + f"{event.time % 1:.3f}"[1:]
    words = [when, f"#{event.seq}", f"{event.kind:<12}"]
    if event.kind == "lost":
        return " ".join(words + [f"{event.lost} events before this one are gone"])
    if event.program is not None:
        words.append(event.program)
    for name, value in (("domain", event.domain), ("core", event.core), ("pid", event.pid),
                        ("status", event.returncode), ("restarts", event.restarts)):
        if value is not None:
            words.append(f"{name}={value}")
    if event.cpu_user is not None:
        words.append(f"cpu={event.cpu_user + event.cpu_system:.3f}s")
    if event.max_rss is not None:
        words.append(f"rss={event.max_rss / 2**20:.1f}MB")
    if event.error:
        words.append(f"({event.error})")
    return " ".join(words)


def cmd_status(args) -> int:
    """A domain's state (by id or token), or a supervised program's with
    its last incarnations (by name); without either, the runtime's: what
    a kill reaches there (procmgr/containment.py)."""
    token = args.token
    if token is None:
        with _client(args) as pm:
            row = {"name": args.name, "containment": pm.containment,
                   "domains": len(pm.domains())}
        _emit(args, row, f"runtime {args.name!r}: {row['domains']} live domains; "
                         f"containment {row['containment']}")
        return 0
    if not re.fullmatch(r"\d+(:[0-9a-fA-F]+)?", token):     # web, web:0: a program's name
        return _program_status(args)
    ident = int(token) if token.isdigit() else _domain(token).id
    with _client(args) as pm:
        row = _info(pm, ident)
    _emit(args, row, _table([row]))
    return 0


def _program_status(args) -> int:
    with _client(args) as pm:
        try:
            info = pm.program(args.token)
        except ValueError as e:
            raise CliError(str(e)) from None
    view = dataclasses.asdict(info)
    view["domain"] = None if info.domain is None else info.domain.token
    lines = [_programs_table([view]), "", "last incarnations, newest last:",
             f"{'DOMAIN':>7} {'PID':>7} {'STARTED':>10} {'ENDED':>10}  HOW"]
    for h in info.history:
        how = h.get("error") or _ended({"exit_status": h.get("status"),
                                        "killed": h.get("killed"),
                                        "signaled": h.get("signaled")}) or "running"
        how = f"exit {how}" if how.isdigit() else how
        lines.append(f"{h.get('domain') or '-':>7} {h.get('pid') or '-':>7} "
                     f"{_ago(h.get('started')):>10} {_ago(h.get('ended')):>10}  {how}")
    if info.error:
        lines.append(f"error: {info.error}")
    _emit(args, view, "\n".join(lines))
    return 0


def cmd_ps(args) -> int:
    """Domains; and supervised programs, if any (`--json`: both, as
    {"domains": [...], "programs": [...]} when there are programs).
    --state, --core and --program keep only what matches."""
    state = _state_filter(args.state)
    with _client(args) as pm:
        ids = pm.domains()
        if args.all or state in _ENDED_STATES:    # the ended ones it remembers, too
            ids = sorted(set(ids) | set(pm.domains(ended=True)))
        rows = []
        for i in ids:
            try:
                rows.append(_info(pm, i))
            except ProcMgmtError:           # forgotten between the listing and now
                pass
        programs = pm.programs()
        rows, programs = _filtered(rows, programs, state, args.core, args.program)
        if args.last:
            for row in rows:
                row["last"] = _last_line(pm, row)
    text = _table(rows) if rows else "no domains"
    if programs:
        text += "\n\n" + _programs_table(programs)
    _emit(args, {"domains": rows, "programs": programs} if programs else rows, text)
    return 0


_DOMAIN_STATES = tuple(s.name for s in State)
_ENDED_STATES = ("STOPPED", "CLEANED")
_PROGRAM_STATES = ("STARTING", "RUNNING", "BACKOFF", "STOPPED", "EXITED", "FATAL")


def _state_filter(text: str | None) -> str | None:
    if text is None:
        return None
    state = text.strip().upper()
    known = sorted(set(_DOMAIN_STATES) | set(_PROGRAM_STATES))
    if state not in known:
        raise CliError(f"unknown state {text!r} (a domain's or a program's: {', '.join(known)})")
    return state


def _filtered(rows: list[dict], programs: list[dict], state: str | None, core: int | None,
              pattern: str | None) -> tuple[list[dict], list[dict]]:
    """What ps shows of domains and programs under its filters: a state
    (a domain's or a program's), a core, a program name or pattern (its
    incarnations among the domains)."""
    import fnmatch

    if pattern is not None:
        programs = [p for p in programs if fnmatch.fnmatchcase(p["name"], pattern)]
        pids = {p["pid"] for p in programs if p["pid"]}
        rows = [r for r in rows if pids & set(r["pids"])]
    if state is not None:
        rows = [r for r in rows if r["state"] == state]
        programs = [p for p in programs if p["state"] == state]
    if core is not None:
        rows = [r for r in rows if core in r["cores"]]
        programs = [p for p in programs if p["core"] == core]
    return rows, programs


def _last_line(pm, row: dict) -> str:
    """The last line the domain printed to its captured stdout ("" if none)."""
    if not row["cores"] or pm.logs_dir is None:
        return ""
    data = logs.read_log(pm.logs_dir, row["id"], row["cores"][0], "stdout", tail=1)
    return data.decode(errors="replace").strip()[:60]


def _table(rows: list[dict]) -> str:
    from rich.console import Console

    console = Console(width=120, force_terminal=False)
    with console.capture() as cap:
        console.print(_rich_table(rows))
    return cap.get().rstrip()


def _shown(word: str) -> str:
    """An argument for the terminal: bytes that are not UTF-8 escaped."""
    return os.fsencode(word).decode("utf-8", "backslashreplace")


def _ended(row: dict) -> str:
    """How a domain ended, told apart: killed, a signal's name, or its code."""
    if row["exit_status"] is None:
        return ""
    if row["killed"]:
        return "killed"
    if row["signaled"]:
        try:
            return signal.Signals(row["exit_status"]).name
        except ValueError:
            return f"signal {row['exit_status']}"
    return str(row["exit_status"])


def _ago(when: float | None) -> str:
    """How long ago, as ps would say it: 42s, 7m, 3h, 2d ago."""
    if not when:
        return ""
    s = max(0.0, time.time() - when)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size:.0f}{unit} ago"
    return f"{s:.0f}s ago"


def _rich_table(rows: list[dict]):
    from rich.table import Table

    table = Table(box=None)
    last = bool(rows) and "last" in rows[0]
    ended = any(r.get("ended") for r in rows)
    for col in ("ID", "STATE", "CORES", "PIDS", "PROCS", "EXIT") + \
            (("ENDED",) if ended else ()) + ("CPU s", "RSS MB", "ARGV") + \
            (("LAST OUTPUT",) if last else ()):
        table.add_column(col, justify="right" if col in ("ID", "PROCS", "EXIT", "CPU s",
                                                           "RSS MB") else "left")
    for r in rows:
        table.add_row(str(r["id"]), r["state"], ",".join(map(str, r["cores"])),
                      ",".join(map(str, r["pids"])), str(len(r.get("processes") or [])),
                      _ended(r), *((_ago(r.get("ended")),) if ended else ()),
                      "" if r["cpu_s"] is None else str(r["cpu_s"]),
                      "" if r["rss_mb"] is None else str(r["rss_mb"]),
                      " ".join(map(_shown, r["argv"])), *((r["last"],) if last else ()))
    return table


def _emit(args, data, text: str) -> None:
    print(json.dumps(data) if getattr(args, "json", False) else text)


def cmd_storm(args) -> int:
    from rich.progress import Progress

    from procmgr import storm

    if args.programs is not None:
        return _program_storm(args)
    try:
        mix = storm.parse_mix(args.mix)
    except ValueError as e:
        raise CliError(str(e)) from None
    if args.cores < 1 or args.clients < 1 or args.ops < 1:
        raise CliError("--cores, --clients and --ops must be at least 1")
    total = args.clients * args.ops
    if args.json:
        summary = storm.storm(args.cores, args.clients, args.ops, mix, simulate=args.simulate)
    else:
        with Progress(transient=True) as bar:
            task = bar.add_task(f"storm: {args.clients} clients x {args.ops} ops on "
                                f"{args.cores} cores", total=total)
            summary = storm.storm(args.cores, args.clients, args.ops, mix,
                                  progress=lambda n: bar.update(task, completed=n),
                                  simulate=args.simulate)
    _emit(args, summary, _summary_table(summary))
    return 0 if storm.healthy(summary) else 1


def _program_storm(args) -> int:
    """--programs: supervised programs crashed, killed, stopped, started,
    restarted and reloaded, checked from the events (procmgr/program_storm.py)."""
    from procmgr.program_storm import program_storm

    if args.programs < 1 or args.cores < 1 or not args.seconds > 0:
        raise CliError("--programs and --cores must be at least 1, --seconds more than 0")
    summary = program_storm(args.cores, args.programs, args.seconds, args.seed)
    lines = [f"program storm: {args.programs} programs on {args.cores} cores for "
             f"{summary['seconds']} s (seed {summary['seed']})",
             "actions: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["actions"].items())),
             f"events: {summary['events']:,} (" +
             ", ".join(f"{k}={v}" for k, v in sorted(summary["kinds"].items())) + ")",
             f"manager CPU: {summary['manager_cpu_s']} s",
             "wrong: " + ("nothing" if not summary["wrong"] else
                          "\n  " + "\n  ".join(summary["wrong"][:20]))]
    _emit(args, summary, "\n".join(lines))
    return 0 if not summary["wrong"] else 1


def _summary_table(s: dict) -> str:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="storm", box=None, show_header=False)
    t.add_column(justify="left")
    t.add_column(justify="right")
    rows = [("requests", f"{s['ops']:,}"), ("answered", f"{s['answered']:,}"),
            ("ops/s", f"{s['ops_per_s']:,}"), ("latency p50 ms", str(s["latency_ms_p50"])),
            ("latency p99 ms", str(s["latency_ms_p99"])),
            ("exit statuses checked", f"{s['statuses_checked']:,}"),
            ("wrong exit statuses", str(s["wrong_status"])),
            ("lost replies", str(s["lost"])), ("duplicated replies", str(s["duplicated"])),
            ("errors by code", ", ".join(f"{k}={v}" for k, v in s["errors"].items()) or "none"),
            ("answers the manager counted", f"{s['manager_answered']:,}"),
            ("domains left", str(s["domains_left"])),
            ("manager RSS KiB start/warm/end",
             "/".join(str(v) for v in s["manager_rss_kb"].values())),
            ("zombies", str(len(s["zombies"]))), ("orphans", str(len(s["orphans"]))),
            ("leaked segments", str(len(s["leaked_segments"]))), ("seconds", str(s["seconds"]))]
    for k, v in rows:
        t.add_row(k, v)
    console = Console(width=100, force_terminal=False)
    with console.capture() as cap:
        console.print(t)
    return cap.get().rstrip()


def cmd_cleanup(args) -> int:
    """Remove what crashed runtimes left: segments whose creator is gone,
    runtime directories no live manager holds (procmgr/osutil.py,
    remove_dead_runtime_dir), stale pid files."""
    removed = []
    for entry in ringbuf.orphaned_segments("procmgr"):
        _remove(os.path.join("/dev/shm", entry), removed)
    root = os.path.dirname(runtime_dir("x"))
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if entry.endswith(".pid"):
            try:
                with open(path) as f:
                    alive = psutil.pid_exists(int(f.read()))
            except ValueError:
                alive = False
            if not alive:
                _remove(path, removed)
        elif remove_dead_runtime_dir(path):      # a live one's is left alone, whole
            removed.append(path)
    _emit(args, {"removed": removed},
          "\n".join(f"removed {r}" for r in removed) or "nothing to clean up")
    return 0


def _remove(path: str, removed: list) -> None:
    try:
        os.rmdir(path) if os.path.isdir(path) else os.unlink(path)
        removed.append(path)
    except FileNotFoundError:
        pass


def cmd_top(args) -> int:
    """A live view: cores (worker CPU, queue depths), requests/s, domains,
    and the supervised programs (as ps shows them)."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    procs: dict[int, psutil.Process] = {}

    def cpu(pid: int) -> float:
        p = procs.get(pid)
        if p is None:
            p = procs[pid] = psutil.Process(pid)
            p.cpu_percent(None)      # first call primes the counter
        try:
            return p.cpu_percent(None)
        except psutil.NoSuchProcess:
            return 0.0

    with _client(args) as pm:
        last, last_t = None, time.monotonic()
        with Live(auto_refresh=False, screen=False) as live:
            frame = 0
            while args.count is None or frame < args.count:
                stats = pm.stats()
                now = time.monotonic()
                rate = 0.0 if last is None else (stats["answered"] - last) / (now - last_t)
                last, last_t = stats["answered"], now
                rows = [_info(pm, i) for i in pm.domains()]
                programs = pm.programs()
                shown = [_cores_table(stats, rate, cpu), _rich_table(rows)]
                if programs:
                    shown.append(Text("\n" + _programs_table(programs)))
                live.update(Group(*shown), refresh=True)
                frame += 1
                if args.count is None or frame < args.count:
                    time.sleep(args.interval)
    return 0


def _cores_table(stats: dict, rate: float, cpu):
    from rich.table import Table

    t = Table(title=f"{stats['domains']} domains, {stats['clients']} clients, "
                    f"{rate:,.0f} requests/s, pending={stats['pending_kind']}", box=None)
    for col in ("CORE", "WORKER", "CPU %", "SEND Q", "REPLY Q", "SENT", "REPLIES"):
        t.add_column(col, justify="right")
    for core, c in stats["cores"].items():
        pid = stats["workers"].get(core)
        t.add_row(core, str(pid or "-"), f"{cpu(pid):.0f}" if pid else "-", str(c["sendq"]),
                  f"{c['pending']}/{c['pending_capacity']}", str(c["sent"]), str(c["replies"]))
    return t


def cmd_bench(args) -> int:
    # The benchmarks are not part of the installed library (they need pytest
    # and numpy, and measure against peers a user does not need): they are
    # the bench/ folder of a source checkout, loaded only here.
    try:
        from bench import report
    except ImportError:
        raise CliError("procmgr bench runs the benchmarks in the bench/ folder of a procmgr "
                       "source checkout: run it from the checkout's root, after "
                       "`pip install -e '.[test]'`") from None
    kinds = report.KINDS if args.what == "all" else (args.what,)
    results = report.run(kinds, quick=args.quick)
    if args.report:
        path = report.write(results, args.report)
        if not args.json:
            print(f"report written to {path}")
    if args.json:
        print(json.dumps(results))
    elif not args.report:
        from bench import aio, output, pending_report, ring_report, scale, spawn, supervise

        tables = {"ring": ring_report.table, "spawn": spawn.table, "aio": aio.table,
                  "output": output.table, "pending": pending_report.table,
                  "scale": scale.table, "supervise": supervise.table}
        print("\n\n".join(tables[k](results[k]) for k in kinds))
    return 0


# ---- the parser -----------------------------------------------------------------


JSON_HELP = "print the result as JSON"
TOKEN_HELP = "the domain's token (ID:NONCE), as spawn printed it"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="procmgr", description="Run and supervise programs on simulated cores.",
        epilog="example: procmgr up --cores 4 --detach && procmgr spawn -- /bin/sleep 5",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name, func, help, example):
        p = sub.add_parser(name, help=help, description=help, epilog=f"example: {example}")
        p.add_argument("--name", default=DEFAULT_NAME, help="runtime name (default: default)")
        p.set_defaults(func=func)
        return p

    p = add("up", cmd_up, "start a runtime", "procmgr up --cores 4 --detach")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                   help="simulated cores, a worker each (default: this machine's CPUs)")
    p.add_argument("--pending", choices=["replyq", "hashtable"], default="replyq",
                   help="how pending clients are matched to replies (default: replyq)")
    p.add_argument("--detach", action="store_true", help="run in the background")
    p.add_argument("--containment", choices=("auto", "cgroup", "tree"), default="auto",
                   help="what a kill reaches: a cgroup per domain, or its process tree "
                        "(default auto: cgroup where cgroup v2 can be written)")
    p.add_argument("--config", metavar="FILE",
                   help="a procmgr.toml whose programs are started (checked first: a bad "
                        "file starts nothing)")
    p = add("reload", cmd_reload, "apply a changed procmgr.toml: start the new, stop the "
            "removed, restart the changed", "procmgr reload --config procmgr.toml")
    p.add_argument("--config", metavar="FILE", required=True, help="the procmgr.toml")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    add("down", cmd_down, "stop a runtime: every domain killed, nothing left", "procmgr down")
    p = add("spawn", cmd_spawn, "start a program; prints its id and cap token",
            "procmgr spawn --core 1 --env MODE=x -- /bin/sleep 30")
    p.add_argument("--core", type=int, default=0, help="the core to run on (default: 0)")
    p.add_argument("--env", action="append",
                   help="KEY=VALUE added to the runtime's environment (repeat for more)")
    p.add_argument("--cwd", metavar="DIR",
                   help="the directory it starts in (default: this one)")
    p.add_argument("--stdout", metavar="log|null|PATH",
                   help="where its stdout goes (default: log, read with `procmgr logs`)")
    p.add_argument("--stderr", metavar="log|null|stdout|PATH",
                   help="where its stderr goes (default: log)")
    p.add_argument("--stdin", metavar="PATH", help="a file for its stdin (default: /dev/null)")
    p.add_argument("--append", action="store_true", help="append to --stdout/--stderr files")
    _process_options(p)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("program", nargs=argparse.REMAINDER, help="-- then the program and its arguments")
    p = add("run", cmd_run, "run a program in the runtime with this terminal's output; "
            "exits with its status", "procmgr run --core 1 -- /bin/echo hi")
    p.add_argument("--core", type=int, default=0, help="the core to run on (default: 0)")
    p.add_argument("--env", action="append",
                   help="KEY=VALUE added to the runtime's environment (repeat for more)")
    p.add_argument("--cwd", metavar="DIR",
                   help="the directory it starts in (default: this one)")
    _process_options(p)
    p.add_argument("program", nargs=argparse.REMAINDER, help="-- then the program and its arguments")
    p = add("logs", cmd_logs, "a domain's captured output", "procmgr logs 3 -f --tail 20")
    p.add_argument("token", help="a domain id or token")
    p.add_argument("-f", "--follow", action="store_true",
                   help="print new output as it comes, until the domain has ended")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--stderr", action="store_true", help="its stderr instead of stdout")
    which.add_argument("--both", action="store_true",
                       help="stdout to our stdout and stderr to our stderr")
    p = add("span", cmd_span, "run a domain on another core too", "procmgr span TOKEN --core 1")
    p.add_argument("token", help=TOKEN_HELP)
    p.add_argument("--core", type=int, required=True, help="the core to run it on too")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = add("kill", cmd_kill, "end a domain on every core: a signal, then SIGKILL after a grace",
            "procmgr kill 3:9f1c... --signal INT --grace 10")
    p.add_argument("token", help=TOKEN_HELP)
    p.add_argument("--signal", metavar="SIG",
                   help="the signal it gets first, by name or number (default: TERM)")
    p.add_argument("--grace", type=float, metavar="SECONDS",
                   help="how long it may take to stop before SIGKILL (default: the runtime's, "
                        "0.2)")
    p = add("signal", cmd_signal, "send a domain's programs a signal without ending it",
            "procmgr signal 3:9f1c... HUP")
    p.add_argument("token", help=TOKEN_HELP)
    p.add_argument("signal", metavar="SIG", help="the signal, by name or number (HUP, USR1, 10)")
    p = add("wait", cmd_wait, "wait for a domain; exits with its status",
            "procmgr wait 3:9f1c... --nohang")
    p.add_argument("token", help=TOKEN_HELP)
    p.add_argument("--nohang", action="store_true",
                   help="say whether it still runs instead of waiting for its end")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = add("events", cmd_events, "follow what happens to domains and programs, as it "
            "happens", "procmgr events --kind exited,restarted --json")
    p.add_argument("--after", type=int, metavar="SEQ",
                   help="go on after this event (0: every event the runtime keeps; "
                        "default: from now on)")
    p.add_argument("--kind", action="append", metavar="KIND[,KIND]",
                   help="only these kinds (spawned, exited, killed, spawn_failed, started, "
                        "restarted, backoff, stopped, finished, given_up, removed)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N events")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="stop (exit 1) once this long has passed without an event")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = add("status", cmd_status, "one domain's state, or a program's with its last "
            "incarnations", "procmgr status 3 --json; procmgr status web")
    p.add_argument("token", nargs="?",
                   help="a domain id or token, or a supervised program's name (none: the "
                        "runtime's containment and domains)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = add("ps", cmd_ps, "list the domains, and the supervised programs", "procmgr ps --all")
    p.add_argument("--last", action="store_true", help="with the last line each printed")
    p.add_argument("--all", action="store_true",
                   help="the ended domains the runtime remembers too: how and when each ended")
    p.add_argument("--state", metavar="STATE",
                   help="only domains and programs in this state (RUNNING, STOPPED, BACKOFF, "
                        "FATAL, ...)")
    p.add_argument("--core", type=int, metavar="N", help="only what runs on core N")
    p.add_argument("--program", metavar="NAME",
                   help="only this program (a pattern: 'web:*') and its incarnations")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = add("supervise", cmd_supervise, "start a program the runtime keeps running, as its "
            "restart policy says", "procmgr supervise --program web --restart always -- ./server")
    p.add_argument("--program", dest="program_name", required=True, metavar="NAME",
                   help="the program's name, for start/stop/restart and ps")
    p.add_argument("--restart", choices=["on-failure", "always", "no"], default="on-failure",
                   help="which ends it is started again after (default: on-failure)")
    p.add_argument("--backoff", type=float, default=0.1, metavar="SECONDS",
                   help="the first delay before a restart; doubled for each quick end in a "
                        "row (default: 0.1)")
    p.add_argument("--backoff-max", type=float, default=30.0, metavar="SECONDS",
                   help="the longest delay (default: 30)")
    p.add_argument("--max-restarts", type=int, default=5, metavar="N",
                   help="more restarts than this within --period and it is given up (FATAL); "
                        "-1: never (default: 5)")
    p.add_argument("--period", type=float, default=60.0, metavar="SECONDS",
                   help="the window --max-restarts counts in (default: 60)")
    p.add_argument("--core", type=int, default=0, help="the core to run on (default: 0)")
    p.add_argument("--env", action="append",
                   help="KEY=VALUE added to the runtime's environment (repeat for more)")
    p.add_argument("--cwd", metavar="DIR", help="the directory it starts in (default: this one)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("program", nargs=argparse.REMAINDER, help="-- then the program and its arguments")
    for action, help in (("start", "start a supervised program that has stopped or given up"),
                         ("stop", "stop a supervised program: no restart, its process ended"),
                         ("restart", "stop a supervised program, then start it")):
        p = add(action, _program_action(action), help, f"procmgr {action} web")
        p.add_argument("program_name", metavar="PROGRAM",
                       help="the program's name, or NAME:* for a file's numprocs group")
        p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = add("storm", cmd_storm, "hammer a runtime of its own with real programs, checking "
            "every answer", "procmgr storm --cores 4 --clients 3 --ops 200 --mix spawn=4,kill=2")
    p.add_argument("--cores", type=int, default=4, help="cores of the storm's runtime")
    p.add_argument("--clients", type=int, default=3, help="client processes hammering it")
    p.add_argument("--ops", type=int, default=200, help="operations per client")
    p.add_argument("--mix", help="weights, e.g. spawn=4,kill=2,wait=3,span=1,exit=1")
    p.add_argument("--simulate", action="store_true",
                   help="simulated dispatchers: the control plane alone, no process started")
    p.add_argument("--programs", type=int, metavar="N",
                   help="instead: N supervised programs crashed, killed, stopped, started, "
                        "restarted and reloaded at random, checked from the runtime's events")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="with --programs: how long (default: 10)")
    p.add_argument("--seed", type=int, help="with --programs: the random seed, to replay one")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = add("top", cmd_top, "live view of cores, queues, requests/s, domains and programs",
            "procmgr top --interval 1")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--count", type=int, default=None, help="stop after this many refreshes")
    p = add("bench", cmd_bench, "measure the project against its peers in one run",
            "procmgr bench ring --report out/")
    p.add_argument("what", nargs="?", default="all",
                   choices=["ring", "spawn", "aio", "output", "pending", "scale", "supervise",
                            "all"],
                   help="which measurement (default: all)")
    p.add_argument("--report", metavar="DIR", help="write report.md and PNG plots there")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not figures")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = add("cleanup", cmd_cleanup, "remove what crashed runtimes left behind",
            "procmgr cleanup --json")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    from procmgr.cluster import cli as cluster_cli    # its own commands; Ray when used
    cluster_cli.add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "program", None) and args.program[0] == "--":
        args.program = args.program[1:]
    try:
        return args.func(args)
    except (CliError, ProcMgmtError, RuntimeNotFound, PermissionError, TimeoutError,
            OSError) as e:
        print(f"procmgr: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
