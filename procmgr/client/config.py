"""Programs declared in a file: `procmgr up --config procmgr.toml` starts
them, `procmgr reload --config procmgr.toml` applies a changed file --
the new started, the removed stopped and forgotten, the changed started
again, the rest untouched.

    [programs.web]
    argv = ["./server", "--port", "8080"]
    numprocs = 2              # web:0 and web:1, spread over the cores
    cwd = "/srv/web"
    env = { MODE = "prod" }   # added to the runtime's environment
    stdout = "log"            # log (default), null, inherit, or a path
    stderr = "stdout"         # ... or stdout
    restart = "always"        # no, on-failure (default), always
    backoff = 0.5
    max_restarts = 10         # within period s, then given up; -1: retry without end
    period = 60
    stop_signal = "INT"
    stop_timeout = 10
    depends_on = ["db"]       # started after db
    limits = { nofile = 1024, cpu = [60, 120], core = 0 }   # "unlimited" for none
    user = "www-data"         # a runtime running as root
    umask = 0o027

    [programs.db]
    argv = ["./db"]
    core = 1                  # or cores = [0, 1]: one copy on each

The file is read whole and checked before anything is started: a bad one
is one error naming the file, the program's table (with its line) and the
key, and nothing runs half-way. Each program carries a digest of its
table, so that a reload knows which changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import signal
import time
import tomllib
from dataclasses import dataclass, field

from procmgr.client import logs
from procmgr.client.client import _process_settings
from procmgr.protocol.programs import Policy, check_name

_POLICY_KEYS = ("restart", "backoff", "backoff_factor", "backoff_max", "jitter",
                "reset_after", "max_restarts", "period")
_KEYS = {"argv", "core", "cores", "numprocs", "env", "cwd", "stdout", "stderr", "stop_signal",
         "stop_timeout", "autostart", "depends_on", "limits", "user", "group", "umask",
         *_POLICY_KEYS}
_STREAMS = {"log": logs.LOG, "null": logs.DEVNULL, "inherit": logs.INHERIT}


class ConfigError(ValueError):
    """A file that cannot be used, and where: file, line, table, key."""


@dataclass
class Declared:
    """One program as the file declares it (one copy of a numprocs group)."""

    name: str
    argv: list[str]
    core: int
    options: dict = field(default_factory=dict)     # spawn's
    policy: dict = field(default_factory=dict)      # supervise's
    autostart: bool = True
    depends_on: list[str] = field(default_factory=list)
    digest: str = ""


def load(path: str, cores: int | None = None) -> list[Declared]:
    """The programs of ``path``, checked, in the order they are to start
    (dependencies first). ``cores``: how many the runtime has, for
    numprocs to spread over and core numbers to be checked against."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    text = raw.decode("utf-8")
    unknown = sorted(set(doc) - {"programs"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key {unknown[0]!r} "
                          "(programs are tables under [programs.NAME])")
    programs = doc.get("programs", {})
    if not isinstance(programs, dict):
        raise ConfigError(f"{path}: 'programs' must be tables, [programs.NAME]")
    out: list[Declared] = []
    for name, table in programs.items():
        where = f"{path}:{_line_of(text, name)}: [programs.{name}]"
        try:
            out += _program(name, table, cores)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where}: {e}") from None
    names = {d.name for d in out}
    groups = {d.name.split(":")[0] for d in out}
    for d in out:
        for dep in d.depends_on:
            if dep not in names and dep not in groups:
                raise ConfigError(f"{path}:{_line_of(text, d.name.split(':')[0])}: "
                                  f"[programs.{d.name.split(':')[0]}]: depends_on: no program "
                                  f"{dep!r} in the file")
    return _ordered(out, path)


def _line_of(text: str, name: str) -> int:
    """The line of a program's table header (1 if it cannot be found)."""
    pattern = re.compile(r"^[ \t]*\[\s*programs\s*\.\s*[\"']?" + re.escape(name) + r"[\"']?\s*\]",
                         re.M)
    m = pattern.search(text)
    return text.count("\n", 0, m.start()) + 1 if m else 1


def _program(name: str, t: dict, cores: int | None) -> list[Declared]:
    if not isinstance(t, dict):
        raise TypeError("must be a table")
    check_name(name)
    if ":" in name:
        raise ValueError("a program's name in the file has no ':' (numprocs adds ':N')")
    unknown = sorted(set(t) - _KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    argv = t.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv: a non-empty list of strings, the program first")
    placed = [k for k in ("core", "cores", "numprocs") if k in t]
    if len(placed) > 1:
        raise ValueError(f"{placed[0]} and {placed[1]}: give one of core, cores, numprocs")
    if "cores" in t:
        where = t["cores"]
        if not isinstance(where, list) or not where:
            raise ValueError("cores: a non-empty list of core numbers")
    elif "numprocs" in t:
        n = t["numprocs"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024:
            raise ValueError(f"numprocs: a whole number 1..1024, not {n!r}")
        where = [i % (cores or 1) for i in range(n)]
    else:
        where = [t.get("core", 0)]
    for c in where:
        if isinstance(c, bool) or not isinstance(c, int) or c < 0 or \
                (cores is not None and c >= cores):
            raise ValueError(f"core {c!r} is not one of this runtime's 0..{(cores or 1) - 1}")
    options: dict = {}
    env = t.get("env")
    if env is not None:
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ValueError("env: a table of KEY = \"value\" strings")
        options["env_extra"] = dict(env)
    if "cwd" in t:
        if not isinstance(t["cwd"], str) or not t["cwd"]:
            raise ValueError("cwd: a directory path")
        options["cwd"] = t["cwd"]
    for stream in ("stdout", "stderr"):
        if stream in t:
            options[stream] = _stream(stream, t[stream])
    if "stop_signal" in t:
        options["stop_signal"] = _signal(t["stop_signal"])
    if "stop_timeout" in t:
        v = t["stop_timeout"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v < 0:
            raise ValueError(f"stop_timeout: seconds, at least 0, not {v!r}")
        options["stop_timeout"] = v
    process = {k: t[k] for k in ("limits", "user", "group", "umask") if k in t}
    if isinstance(process.get("limits"), dict):      # TOML has no null: "unlimited"
        process["limits"] = {k: _unlimited(v) for k, v in process["limits"].items()}
    try:
        _process_settings(dict(process))             # checked now, said with its key
    except (ValueError, TypeError) as e:
        raise ValueError(str(e)) from None
    options |= process
    policy = {k: t[k] for k in _POLICY_KEYS if k in t}
    if policy.get("max_restarts") == -1:        # TOML has no null: -1, as the CLI's
        policy["max_restarts"] = None
    Policy.of(policy)                           # checked now, said with its key
    autostart = t.get("autostart", True)
    if not isinstance(autostart, bool):
        raise ValueError(f"autostart: true or false, not {autostart!r}")
    deps = t.get("depends_on", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise ValueError("depends_on: a list of program names")
    digest = hashlib.sha256(json.dumps(t, sort_keys=True, default=str).encode()).hexdigest()[:16]
    many = len(where) > 1
    return [Declared(f"{name}:{i}" if many else name, list(argv), core, dict(options),
                     dict(policy), autostart, list(deps), digest)
            for i, core in enumerate(where)]


def _stream(which: str, value) -> object:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{which}: log, null, inherit, a path" +
                         (", or stdout" if which == "stderr" else ""))
    if which == "stderr" and value == "stdout":
        return logs.STDOUT
    return _STREAMS.get(value, value)


def _signal(value) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        key = value.upper()
        try:
            return signal.Signals[key if key.startswith("SIG") else "SIG" + key]
        except KeyError:
            pass
    raise ValueError(f"stop_signal: a signal name or number (TERM, INT, 15), not {value!r}")


def _ordered(programs: list[Declared], path: str) -> list[Declared]:
    """Dependencies first; a cycle is an error naming it."""
    by_group: dict[str, list[Declared]] = {}
    for d in programs:
        by_group.setdefault(d.name.split(":")[0], []).append(d)
    order: list[Declared] = []
    state: dict[str, str] = {}

    def visit(group: str, chain: list[str]) -> None:
        if state.get(group) == "done":
            return
        if state.get(group) == "visiting":
            raise ConfigError(f"{path}: depends_on makes a cycle: "
                              f"{' -> '.join(chain + [group])}")
        state[group] = "visiting"
        for dep in by_group[group][0].depends_on:
            visit(dep.split(":")[0], chain + [group])
        state[group] = "done"
        order.extend(by_group[group])

    for group in by_group:
        visit(group, [])
    return order


def apply(pm, declared: list[Declared], timeout: float = 30.0) -> dict:
    """Make the runtime's programs what the file declares: start the new
    (autostart), stop and forget those no longer declared, start again
    those whose table changed; leave the rest be. What was done, by name."""
    current = {p["name"]: p for p in pm.programs(timeout=timeout)}
    wanted = {d.name: d for d in declared}
    done: dict[str, list[str]] = {"started": [], "removed": [], "changed": [], "kept": []}
    for name in current:
        if name not in wanted:
            pm.remove_program(name, timeout=timeout)
            done["removed"].append(name)
    for d in declared:
        have = current.get(d.name)
        if have is not None and have.get("tag") == d.digest:
            done["kept"].append(d.name)
            continue
        if have is not None:
            pm.remove_program(d.name, timeout=timeout)
        _wait_for_dependencies(pm, d, wanted, timeout)
        pm.supervise(d.argv, name=d.name, core=d.core, tag=d.digest, autostart=d.autostart,
                     timeout=timeout, **d.policy, **d.options)
        done["changed" if have is not None else "started"].append(d.name)
    return done


def _wait_for_dependencies(pm, d: Declared, wanted: dict, timeout: float) -> None:
    """Until what ``d`` depends on is past starting: RUNNING, or settled
    (a dependency that will not run is said by its own state, in ps)."""
    deps = [n for n in wanted if n in d.depends_on or n.split(":")[0] in d.depends_on]
    deadline = time.monotonic() + timeout
    for name in deps:
        while pm.program(name, timeout=timeout).state in ("STARTING", "BACKOFF"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{d.name} waits for {name}, which did not start "
                                   f"within {timeout} s")
            time.sleep(0.01)


def _unlimited(value):
    """A limit's value as the client takes it: "unlimited" (TOML has no
    null) is None, a [soft, hard] array a pair."""
    if value == "unlimited":
        return None
    if isinstance(value, list):
        return tuple(_unlimited(v) for v in value)
    return value
