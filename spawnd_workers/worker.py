"""The spawnd worker of one simulated core: a real OS process, pinned to a
CPU, that starts, kills and reaps real programs (the domains' dispatchers).

Single-threaded and event driven. It sleeps in one epoll on

- its doorbell (an eventfd the manager rings after pushing a request while
  the worker had armed its request ring), and
- one pidfd per running dispatcher, readable the moment that process exits:
  the exit is reaped at once and reported, with no SIGCHLD handler and no
  race with a reused pid (numbered 256 and up, out of what a new program's
  process copies: _spawnd.c, "starting a program"), and
- a signalfd for SIGCHLD (blocked in every thread from the start,
  __main__.py), through which an orphan a domain left to us is noticed.

The round that matters for speed -- a spawn served, sleep, an exit reported
-- runs in C (``_spawnd.HotPath.run_once``; see the top of _spawnd.c for why);
everything it does not serve comes back here, in order.

Requests are served in arrival order and each gets exactly one reply,
pushed in the same order (the manager checks the sequence numbers).

How a dispatcher learns who it is: its environment carries
``PROCMGR_DOMAIN_ID`` (the domain id), ``PROCMGR_CORE`` (this core),
``PROCMGR_DISPATCHER`` (0 for the spawned one, 1 for a span) and
``PROCMGR_RUNTIME`` (the runtime's name: how the Runtime recognises, and
ends, domains orphaned by a manager that was killed). The cap's nonce is
not given: only the spawner holds it.

What a dispatcher inherits: argv and env as given (env None: the worker's
environment), the caps as given, stdin from /dev/null unless a cap names
fd 0, and stdout/stderr captured into its log files (which it writes
itself; the rotator bounds them: _rotator.h) unless caps name them --
/dev/null where the worker keeps no logs. Never a descriptor of the
runtime's: every one it has is close-on-exec, and 0, 1 and 2 are always
made anew.

Every dispatcher runs in its own process group and, under cgroup
containment, its own cgroup; a kill (SIGTERM, then SIGKILL after the grace
period) and a domain's own end reach whatever the program forked:
procmgr/containment.py says how in each mode.
"""

from __future__ import annotations

import errno
import functools
import grp
import os
import pwd
import resource
import select
import shutil
import signal
import struct
import sys
import time

from procmgr import containment
from procmgr.osutil import (
    become_subreaper, children_of, die_with_parent, end_and_reap, raise_fd_limit,
    reap_strays, refuse_ptrace, wait_readable, watch_doorbell,
)
from procmgr.protocol import (
    KILL_GRACE_DEFAULT, LOG_BACKUPS, LOG_MAX_BYTES, MAX_PAYLOAD, Decoder, Err, Flag, Msg, Op,
    ProtocolError, SpawnArgs, send, take,
)
from ringbuf import Closed, Ring
from spawnd_workers._spawnd import (
    RUN_CHILDREN, RUN_DECLINED, RUN_FULL, HotPath, Prepared, child_signals,
)

DEFAULT_KILL_GRACE = 0.2
# How long a kill waits for the last members of a group it SIGKILLed to die
# (_spawnd.c's LEFT_GONE_NS, the same for a cgroup).
GROUP_GONE_TIMEOUT = 1.0
# How long a kill waits in line for its program to end after the signal --
# most end within it, and the reply then says so -- before it leaves the
# rest of the grace to the loop and serves the next request. Short: a
# burst of kills of programs that take their time holds the core for this
# long each.
KILL_INLINE_WAIT = 0.001
# How long a SIGKILLed dispatcher is waited for in line before its end is
# left to the loop: a process in the kernel (a stuck mount) takes as long
# as it takes, and the core serves on meanwhile.
KILLED_INLINE_WAIT = 0.05
_CAP_FLAGS = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "rw": os.O_RDWR | os.O_CREAT,
}
# Variables of the runtime itself, never passed on to a domain.
_INTERNAL_ENV = ("PROCMGR_DOMAIN_ID", "PROCMGR_CORE", "PROCMGR_DISPATCHER", "PROCMGR_RUNTIME")
# Distinct spawn payloads kept Prepared; past this the cache starts over.
PREPARED_CACHE = 256
# Tree containment: how often every live domain's descendants are noted,
# how many domains a loop pass looks at, and how many pids one keeps.
TREE_LOOK = 1.0
TREE_LOOK_BATCH = 256
SEEN_MAX = 4096
# The limits a spawn may set, by the names prlimit(1) and ulimit give them.
RLIMITS = {"as": resource.RLIMIT_AS, "cpu": resource.RLIMIT_CPU,
           "nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC,
           "core": resource.RLIMIT_CORE, "fsize": resource.RLIMIT_FSIZE}
# ... and those a cgroup v2 controller enforces (the file's name, "_" for ".").
CGROUP_LIMITS = ("memory_max", "cpu_max", "pids_max")


class Worker:
    def __init__(self, core: int, requests: Ring, replies: Ring, doorbell: int,
                 kill_grace: float = DEFAULT_KILL_GRACE, runtime: str = "",
                 simulate: bool = False, logs_dir: str | None = None,
                 log_max_bytes: int = LOG_MAX_BYTES, log_backups: int = LOG_BACKUPS,
                 rotator_cpus=None, logs_kept: int = 4096, cgroup: str | None = None):
        """``logs_dir``: the runtime's directory of captured streams; this
        core's go into its subdirectory CORE (None: none kept, and a
        domain's stdout and stderr default to /dev/null). ``rotator_cpus``:
        where the log rotator's thread may run -- not only this core's CPU,
        which is its programs'. ``logs_kept``: the files of this core's
        last that many ended domains are kept (the manager's history: a
        domain's log outlives the manager's memory of it). ``cgroup``: the
        runtime's cgroup, under which this worker makes its own and one for
        each dispatcher (cgroup containment); None: tree containment."""
        self.core = core
        # Simulated dispatchers: recorded, never started (control-plane
        # measurements; every figure taken this way says so).
        self.simulate = simulate
        self.simulated: dict[int, int] = {}      # dom -> fake pid
        self._next_fake_pid = 1 << 22
        self.requests = requests      # we consume
        self.replies = replies        # we produce
        # Replies to a batch of requests wake the manager once, after the
        # batch (see "Batched wakes" in ringbuf/_ring.h).
        replies.batch_wakes(True)
        self.doorbell = doorbell
        self.kill_grace = kill_grace
        self.decoder = Decoder()
        self.epoll = select.epoll()
        watch_doorbell(self.epoll, doorbell)
        # What a domain forked and left behind is re-parented to us: reap it.
        become_subreaper()
        # A signalfd, not a handler: an exit costs no signal delivery and no
        # Python (measured: the exit reaches the manager ~6 µs sooner).
        self.child_fd = child_signals()
        self.epoll.register(self.child_fd, select.EPOLLIN)
        self.log_bounds = (log_max_bytes, log_backups)
        self.logs_dir = None if logs_dir is None else os.path.join(logs_dir, str(core))
        # Cgroup containment: this worker's group, its dispatchers' below.
        self.cgroup_dir = None
        if cgroup is not None:
            self.cgroup_dir = os.path.join(cgroup, f"core{core}.{os.getpid()}")
            os.mkdir(self.cgroup_dir)
        # Tree containment: dom -> {pid: start time} of the descendants
        # seen (containment.signal_tree), and when to look at them next.
        self.seen: dict[int, dict[int, int | None]] = {}
        self.next_look = 0.0
        self.to_look: list[int] = []       # the domains this round of looks has left
        hot = functools.partial(HotPath, requests.handle_addr, replies.handle_addr,
                                self.epoll.fileno(), self.child_fd, core, runtime,
                                cgroup_dir=self.cgroup_dir)
        try:
            if self.logs_dir is not None:
                os.makedirs(self.logs_dir, mode=0o700, exist_ok=True)
            self.hot = hot(self.logs_dir, rotator_cpus, 2 * logs_kept)  # two streams a domain
        except OSError as e:
            # No rotator (a user's inotify instances are few: 128 by default):
            # this core keeps no logs rather than unbounded ones, and says so.
            print(f"spawnd.{core}: output is not captured on this core: {e}", file=sys.stderr)
            self.logs_dir = None
            self.hot = hot(None)
        # dom -> Dispatcher (dom, nonce, pid, pidfd, span): the hot path's
        # table, read here; started by hot.start, removed by hot.reap.
        self.dispatchers = self.hot.dispatchers
        # dom -> when its grace ends (monotonic; None once SIGKILLed): the
        # dispatchers a kill signalled that still run. Their ends are ours
        # to report (hot.hold), once their process groups are gone.
        self.in_grace: dict[int, float | None] = {}
        # Their pidfds, to tell which ended; itself in the loop's epoll as
        # the hot path's python_fd, so an end wakes the loop and run_once
        # gives way to us for it, however busy.
        self.grace_ends = select.epoll()
        self.epoll.register(self.grace_ends.fileno(), select.EPOLLIN)
        self.hot.python_fd = self.grace_ends.fileno()
        self.stopping = False
        # The environment a domain gets when its spawn gives none.
        self._env = [k + b"=" + v for k, v in os.environb.items()
                     if k.decode(errors="replace") not in _INTERNAL_ENV]

    # ---- the loop ----

    def run(self) -> None:
        while not self.stopping:
            # Serves spawns it knows, sleeps, reports exits, and again (see
            # _spawnd.c), until something is left for us.
            woke = self.hot.run_once(self.grace_timeout(1.0) if self.in_grace else 1.0,
                                     self.decoder.partial)
            if self.in_grace:
                self.look_at_grace()
            if woke & RUN_DECLINED:
                self.serve_requests()
                self.replies.wake_consumer()   # for this batch
            if woke & RUN_FULL:
                self.replies.wake_consumer()
                self.replies.wait_space(1.0)
            # run_once reports the dispatchers' own exits first, then drains
            # the child watch and asks whether anything else exited: only a
            # stray comes here.
            if woke & RUN_CHILDREN:
                reap_strays(keep={d.pid for d in self.dispatchers.values()})
            if self.cgroup_dir is None and not self.simulate:
                self.follow_trees()

    def follow_trees(self) -> None:
        """Tree containment: end what the domains that ended left behind
        (the descendants seen of each: their end was reported in C), and
        about once a second note every live domain's descendants, so that
        one re-parented to us later is still known as its domain's."""
        if self.seen:
            for dom in self.seen.keys() - self.dispatchers.keys():
                seen = self.seen.pop(dom)
                containment.signal_tree(self._orphans(seen), seen, signal.SIGKILL)
        now = time.monotonic()
        if now < self.next_look:
            return
        # A share of the domains each pass, so that thousands of them cost
        # no one long pause (a walk of 5,000 stalled the core 180 ms).
        if not self.to_look:
            self.to_look = list(self.dispatchers)
            self.next_look = now + TREE_LOOK
        batch, self.to_look = self.to_look[:TREE_LOOK_BATCH], self.to_look[TREE_LOOK_BATCH:]
        for dom in batch:
            d = self.dispatchers.get(dom)
            if d is not None:
                self._note_tree(d)

    def _note_tree(self, d) -> list[int]:
        """The dispatcher's descendants now, remembered with the domain's
        (the dispatcher too: what it leads, a group or a session, is its),
        by pid and start time; a domain that forked nothing has no entry."""
        below = containment.descendants(d.pid)
        if not below and d.dom not in self.seen:
            return below
        seen = self.seen.setdefault(d.dom, {d.pid: containment.started(d.pid)})
        for pid in below:
            seen[pid] = containment.started(pid)     # a pid reused: its new start
        if len(seen) > SEEN_MAX:                     # the gone ones go first
            for pid in [p for p in seen if containment.started(p) != seen[p]]:
                del seen[pid]
        return below

    def _orphans(self, seen) -> list[int]:
        """The orphans re-parented to us that are a domain's by their
        process group or session (containment.orphans_of), ``seen`` its pids."""
        ours = {d.pid for d in self.dispatchers.values()}
        return containment.orphans_of(seen, [p for p in children_of() if p not in ours])

    def serve_requests(self) -> None:
        for msg in take(self.requests, self.decoder):
            if isinstance(msg, ProtocolError):
                print(f"spawnd.{self.core}: bad request: {msg.detail}", file=sys.stderr)
                continue
            try:
                answer = HANDLERS.get(msg.op, Worker.unknown)(self, msg)
            except (ArithmeticError, ValueError, TypeError, OSError) as e:
                # A request's words the checks above missed: its error, not
                # the core's end (every domain on it would end with us).
                print(f"spawnd.{self.core}: request {msg.op} failed: {e!r}", file=sys.stderr)
                answer = msg.reply(Err.EXEC_FAILED if msg.op in (Op.SD_SPAWN, Op.SD_SPAN)
                                   else Err.KILL_FAILED, errno.EINVAL, payload=_words(str(e)))
            self.reply(answer)

    def reply(self, msg: Msg) -> None:
        # The manager keeps at most its reply queue's worth of requests in
        # flight, and the reply ring holds that many: waiting here is rare
        # and short; a dead manager ends it (and us) through PeerDied.
        while not send(self.replies, msg):
            self.replies.wake_consumer()
            self.replies.wait_space(1.0)

    # ---- requests ----

    def unknown(self, msg: Msg) -> Msg:
        return msg.reply(Err.UNKNOWN_OP)

    def spawn(self, msg: Msg) -> Msg:
        return self._start(msg, span=False)

    def span(self, msg: Msg) -> Msg:
        return self._start(msg, span=True)

    def _start(self, msg: Msg, span: bool) -> Msg:
        if msg.dom in self.dispatchers or msg.dom in self.simulated:
            return msg.reply(Err.ALREADY_SPANNED)
        if self.simulate:
            self._next_fake_pid += 1
            self.simulated[msg.dom] = self._next_fake_pid
            return msg.reply(Err.OK, self._next_fake_pid)
        try:
            program = self._prepared(msg.payload)
        except ProtocolError as e:
            return msg.reply(e.code, payload=_words(e.detail))
        except FileNotFoundError as e:          # not in its PATH
            return msg.reply(Err.EXEC_FAILED, errno.ENOENT,
                             payload=_words(f"{e.filename}: {e.strerror}"))
        except (ValueError, TypeError, ArithmeticError) as e:   # refused before any system call
            return msg.reply(Err.EXEC_FAILED, errno.EINVAL, payload=_words(str(e)))
        try:
            pid = self.hot.start(program, msg.dom, msg.nonce, span)
        except OSError as e:
            err, status, detail = _start_failure(program, e)
            return msg.reply(err, status, payload=detail)
        return msg.reply(Err.OK, pid)

    def _prepared(self, payload: bytes) -> Prepared:
        """The program a spawn payload names, as posix_spawn takes it:
        decoded and checked here once, then kept -- where run_once finds it
        and starts the next spawn of the same payload by itself. What every
        dispatcher gets besides (its identity, signals, process group) is
        HotPath.start's."""
        program = self.hot.prepared.get(payload)
        if program is not None:
            return program
        args = SpawnArgs.decode(payload)
        given = args.env
        if args.env_adds:                       # added to ours
            given = {k: v for k, v in os.environ.items() if k not in _INTERNAL_ENV} | given
        path = args.path if "/" in args.path else _in_path(args.path, given)
        env = self._env if given is None else [
            os.fsencode(f"{k}={v}") for k, v in given.items() if k not in _INTERNAL_ENV]
        actions = self._descriptor_actions(args.caps)
        settings = self._settings(args.settings) if args.settings else None
        argv = args.argv or [args.path]
        try:
            if not argv[0]:
                raise ValueError("argv[0] is empty")   # as os.posix_spawn has it
            program = Prepared(path, argv, env, actions, args.cwd, settings)
        except ValueError as e:       # that, or a NUL byte
            raise ValueError(f"{args.path}: {e}") from None
        if len(payload) <= MAX_PAYLOAD:     # a long spawn's megabytes are not kept
            if len(self.hot.prepared) >= PREPARED_CACHE:
                self.hot.prepared.clear()
            self.hot.prepared[payload] = program
        return program

    def _descriptor_actions(self, caps) -> list[tuple]:
        """What each of a program's descriptors is made, in order: its caps,
        then /dev/null for a stdin and the log (or /dev/null) for a stdout or
        stderr the caps do not name; copies ("dup") last, once what they
        copy exists."""
        named = {fd for fd, _, _ in caps}
        made = named | {0, 1, 2}       # what a copy may copy: never a worker's own
        actions, dups = [], []
        if 0 not in named:
            # Nobody reads a domain's terminal input: stdin is /dev/null.
            actions.append(("open", 0, os.devnull, os.O_RDONLY, 0))
        for fd in (1, 2):
            if fd not in named:
                actions.append(self._log_action(fd, "") if self.logs_dir is not None
                               else ("open", fd, os.devnull, os.O_WRONLY, 0))
        for fd, mode, text in caps:
            if mode == "dup":
                if int(text) not in made:
                    raise ValueError(f"descriptor {fd} copies {text}, which the program is "
                                     "not given (only 0, 1, 2 and the caps' own)")
                dups.append(("dup", fd, int(text)))
            elif mode == "n":
                actions.append(("open", fd, os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY,
                                0))
            elif mode == "inherit":
                pid, _, src = text.partition(":")
                actions.append(("inherit", fd, int(pid), int(src)))
            elif mode == "log":
                if self.logs_dir is None:
                    raise ValueError("this runtime keeps no logs: descriptor "
                                     f"{fd} cannot be captured")
                actions.append(self._log_action(fd, text))
            else:
                actions.append(("open", fd, text, _CAP_FLAGS[mode], 0o600))
        return actions + dups

    def _settings(self, given: dict[str, str]) -> tuple:
        """A spawn's settings as Prepared takes them, (limits, uid, gid,
        groups, umask), checked: ValueError saying what cannot be had here
        -- never a limit or an identity silently not applied."""
        limits = []
        for key, text in given.items():
            if not key.startswith("limit."):
                continue
            name = key[len("limit."):]
            if name in CGROUP_LIMITS:
                raise ValueError(self._cgroup_limit_refused(name))
            soft, hard = (_limit_value(name, v) for v in text.split(":", 1)) \
                if text.count(":") == 1 else (None, None)
            if soft is None or hard is None:
                raise ValueError(f"limit {name} is {text!r}, not SOFT:HARD")
            if _over(soft, hard):
                raise ValueError(f"limit {name}: soft {_shown(soft)} is over hard {_shown(hard)}")
            if name == "nofile" and _over(hard, _nr_open()):
                raise ValueError(f"limit nofile: {_shown(hard)} is over the most this system "
                                 f"allows a process (fs.nr_open = {_nr_open()})")
            own = _own_limit(resource.getrlimit(RLIMITS[name])[1])
            if os.geteuid() != 0 and _over(hard, own):
                raise ValueError(f"limit {name}: hard {_shown(hard)} is over this runtime's "
                                 f"own ({_shown(own)}), and only root may raise it")
            limits.append((RLIMITS[name], soft, hard))
        uid = gid = umask = -1
        groups = None
        if "user" in given:
            user = _user(given["user"])
            uid, gid = user.pw_uid, user.pw_gid
            groups = os.getgrouplist(user.pw_name, gid)
        if "group" in given:
            gid = _group(given["group"])
            if groups is None:
                groups = [gid]    # not root's supplementary groups, kept
            elif gid not in groups:
                groups.append(gid)
        if os.geteuid() != 0 and (uid not in (-1, os.geteuid()) or gid not in (-1, os.getegid())):
            raise ValueError(f"user and group need a runtime running as root (this one runs as "
                             f"uid {os.geteuid()})")
        if os.geteuid() != 0:
            groups = None         # setgroups is root's: one's own user keeps one's groups
        if "umask" in given:
            text = given["umask"]
            if not text or not set(text) <= set("01234567") or int(text, 8) > 0o777:
                raise ValueError(f"umask {text!r} is not an octal number 0 to 777")
            umask = int(text, 8)
        return limits, uid, gid, groups, umask

    def _cgroup_limit_refused(self, name: str) -> str:
        """Why a cgroup limit cannot be had here."""
        file = name.replace("_", ".")
        if self.cgroup_dir is None:
            return f"limit {name} ({file}) needs cgroup containment; this runtime has tree " \
                   "containment (no writable cgroup v2 hierarchy)"
        controller = file.split(".")[0]
        try:
            with open(os.path.join(os.path.dirname(self.cgroup_dir), "cgroup.controllers")) as f:
                there = f.read().split()
        except OSError:
            there = []
        return (f"limit {name} ({file}) needs cgroup v2's {controller} controller, which "
                f"this runtime's cgroup is not given (it has: {', '.join(there) or 'none'}); "
                "the machine keeps it elsewhere (a v1 hierarchy) or does not delegate it")

    def _log_action(self, fd: int, bounds: str) -> tuple:
        limit, backups = self.log_bounds
        if bounds:
            limit, backups = (int(x) for x in bounds.split(":"))
        return ("log", fd, limit, backups)

    def kill(self, msg: Msg) -> Msg:
        """The domain's signal (SIGTERM unless the kill says which) to its
        dispatcher and process group, then SIGKILL when its grace is over.
        A program that ends within KILL_INLINE_WAIT is answered as ended
        (RELEASED); one still running is answered STOPPING and the worker
        serves on: its end is reported (SD_EXIT) once its group is gone,
        however long the grace (look_at_grace). A kill of one already in
        its grace sends its signal too, and ends the grace no later than
        its own would end: a second kill can make the end sooner, never
        later."""
        if self.simulated.pop(msg.dom, None) is not None:
            return msg.reply(Err.OK, flags=Flag.RELEASED)
        d = self.dispatchers.get(msg.dom)
        if d is None:
            return msg.reply(Err.NOT_FOUND)
        sig, grace = signal.SIGTERM, self.kill_grace
        if len(msg.payload) == 8:                          # what the killer asked for
            asked, grace_ms = struct.unpack("<II", msg.payload)
            sig = asked or sig
            grace = grace if grace_ms == KILL_GRACE_DEFAULT else grace_ms / 1000
        try:
            self._signal(d, sig)
            if msg.dom in self.in_grace:                   # under way: sooner, if asked
                ends = self.in_grace[msg.dom]
                if ends is not None and time.monotonic() + grace < ends:
                    self.in_grace[msg.dom] = time.monotonic() + grace
                return msg.reply(Err.OK, flags=Flag.STOPPING)
            if not wait_readable(d.pidfd, min(grace, KILL_INLINE_WAIT)):
                if grace > KILL_INLINE_WAIT:
                    return self._hold(msg, d, time.monotonic() + grace)
                self._signal(d, signal.SIGKILL)
                if not wait_readable(d.pidfd, KILLED_INLINE_WAIT):
                    return self._hold(msg, d, None)     # stuck in the kernel: it ends later
            ended = self._ended(d, defer=True)
        except OSError as e:
            return msg.reply(Err.KILL_FAILED, e.errno or errno.EIO)
        if ended is None:            # what it left takes its time: its end comes as SD_EXIT
            return msg.reply(Err.OK, flags=Flag.STOPPING)
        return msg.reply(Err.OK, flags=Flag.RELEASED, payload=ended[1])   # reaped and forgotten

    def _hold(self, msg: Msg, d, deadline: float | None) -> Msg:
        """The kill answered STOPPING: d's end is reported (SD_EXIT) once
        it has ended -- SIGKILLed at ``deadline`` if it has not by then
        (None: it was already) -- by look_at_grace, and the worker serves
        on meanwhile."""
        self.grace_ends.register(d.pidfd, select.EPOLLIN)
        self.hot.hold(d.dom)
        self.in_grace[d.dom] = deadline
        return msg.reply(Err.OK, flags=Flag.STOPPING)

    def look_at_grace(self) -> None:
        """The dispatchers in their grace: SIGKILL those whose grace is
        over, and report the end of those that ended, their groups gone."""
        now = time.monotonic()
        ended = {fd for fd, _ in self.grace_ends.poll(0)}
        for dom, deadline in list(self.in_grace.items()):
            d = self.dispatchers.get(dom)
            if d is None:                          # ended otherwise meanwhile
                del self.in_grace[dom]
            elif d.pidfd in ended:
                del self.in_grace[dom]
                self.grace_ends.unregister(d.pidfd)
                gone = self._ended(d, defer=True)
                if gone is None:              # told by run_once once what it left is gone
                    continue
                status, used = gone
                signaled = os.WIFSIGNALED(status)
                self.reply(Msg(Op.SD_EXIT, core=self.core, dom=dom, nonce=d.nonce,
                               flags=Flag.RELEASED | (Flag.SIGNALED if signaled else 0),
                               status=os.WTERMSIG(status) if signaled else
                               os.WEXITSTATUS(status), payload=used))
                self.replies.wake_consumer()
            elif deadline is not None and now >= deadline:
                self._signal(d, signal.SIGKILL)
                self.in_grace[dom] = None

    def grace_timeout(self, longest: float) -> float:
        """How long the loop may sleep: until the first grace is over (an
        end wakes it anyway: the grace epoll is in its epoll)."""
        deadlines = [t for t in self.in_grace.values() if t is not None]
        if not deadlines:
            return longest
        return min(longest, max(0.0, min(deadlines) - time.monotonic()))

    def send_signal(self, msg: Msg) -> Msg:
        """A signal to the dispatcher's process group (everything the
        program forked that stayed in it); ending it is kill's."""
        if msg.dom in self.simulated:
            return msg.reply(Err.OK)
        d = self.dispatchers.get(msg.dom)
        if d is None:
            return msg.reply(Err.NOT_FOUND)
        try:
            self._signal(d, int.from_bytes(msg.payload[:4], "little"), ending=False)
        except (OSError, ValueError) as e:
            return msg.reply(Err.KILL_FAILED, getattr(e, "errno", None) or errno.EINVAL)
        return msg.reply(Err.OK)

    def cleanup(self, msg: Msg) -> Msg:
        """Release the domain here; a dispatcher still running is ended first."""
        d = self.dispatchers.get(msg.dom)
        if d is not None:
            if self.in_grace.pop(msg.dom, False) is not False:   # ended here and now instead
                self.grace_ends.unregister(d.pidfd)
            self._end(d)
        return msg.reply(Err.OK)

    # ---- processes ----

    def _end(self, d) -> None:
        """SIGTERM the dispatcher's process group, SIGKILL it after the grace
        period, and _ended: for a cleanup, which waits (the domain was
        stopped already; a dispatcher still running here is rare)."""
        self._signal(d, signal.SIGTERM)
        if not wait_readable(d.pidfd, self.kill_grace):
            self._signal(d, signal.SIGKILL)
            wait_readable(d.pidfd, None)
        self._ended(d)

    def _ended(self, d, defer: bool = False) -> tuple[int, bytes] | None:
        """A dispatcher that has ended: what it forked ended too (even what
        outlived the signal), it reaped and forgotten -- and returned only
        once no process of its group (its cgroup, under cgroup
        containment) is left (bounded), so a reply saying it ended means
        it. Its wait status and usage (_reap) -- or, with ``defer``, None
        if its cgroup still holds processes: run_once tells its end (an
        SD_EXIT) once they are gone, and the worker serves on."""
        killed = self._signal(d, signal.SIGKILL)
        ended = self._reap(d, defer)
        if self._group(d) is None:
            self._wait_group_gone(d.pid)
            containment.gone(killed, GROUP_GONE_TIMEOUT, self._reap_strays)
        return ended

    def _group(self, d) -> str | None:
        """The dispatcher's cgroup (None: tree containment)."""
        if self.cgroup_dir is None or d.cgroup < 0:
            return None
        return os.path.join(self.cgroup_dir, f"g{d.cgroup}")

    def _signal(self, d, sig: int, ending: bool = True) -> list[int]:
        """``sig`` to the whole domain on this core, each of its processes
        once. Under cgroup containment, every process of its cgroup
        (SIGKILL: cgroup.kill). Under tree containment, the dispatcher,
        every descendant of it, those seen before and the orphans of
        theirs re-parented to us -- its process group's members among
        them -- each stopped first when it is ``ending`` the domain, so
        that none forks away (containment.signal_tree). The pids it
        signalled (under tree containment; a kill waits for them)."""
        group = self._group(d)
        if group is not None:
            containment.signal_group(group, sig)
            return []
        self._note_tree(d)
        seen = (self.seen.pop(d.dom, None) if sig == signal.SIGKILL
                else self.seen.get(d.dom)) or {d.pid: containment.started(d.pid)}
        return containment.signal_tree([d.pid] + self._orphans(seen), seen, sig,
                                       freeze=ending)

    def _reap_strays(self) -> None:
        reap_strays(keep={d.pid for d in self.dispatchers.values()})

    def _wait_group_gone(self, pgid: int, timeout: float = GROUP_GONE_TIMEOUT) -> None:
        """Until the group is empty: a SIGKILLed process takes a moment to
        die, and those of its members re-parented to us (we are a subreaper)
        stay in it as zombies until we reap them. Usually one system call:
        a program that forked nothing left nobody behind."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            if time.monotonic() >= deadline:
                return      # not ours to wait for any longer; the reply goes out
            self._reap_strays()
            time.sleep(0.001)

    def _reap(self, d, defer: bool = False) -> tuple[int, bytes] | None:
        """Its wait status, and its usage as its end carries it (the
        cgroup's CPU time where there is one: _spawnd.c, usage_bytes); None
        if ``defer``red (_ended)."""
        return self.hot.reap(d.dom, defer)

    def shutdown(self) -> None:
        """End every dispatcher (no grace: the runtime is going away), and
        every orphan of theirs re-parented to us (we are a subreaper): none
        is handed on up, alive or as a zombie."""
        for d in list(self.dispatchers.values()):
            self._signal(d, signal.SIGKILL)
            if wait_readable(d.pidfd, KILLED_INLINE_WAIT):   # else stuck: not waited for
                self._reap(d)
        if self.cgroup_dir is not None:    # all of them, whoever their parent
            containment.end_group(self.cgroup_dir, between=self._reap_strays)
        deadline = time.monotonic() + 5
        while (strays := children_of()) and time.monotonic() < deadline:
            end_and_reap(strays)


def _words(text: str) -> bytes:
    """An error's detail as a reply carries it: a path that is not UTF-8
    shown with its bytes escaped, never an error of its own."""
    return text.encode("utf-8", "backslashreplace")[:256]


def _in_path(name: str, env: dict | None) -> str:
    """A program named without a directory, found as execvp finds it: in
    the PATH of the environment the program gets (ours when the spawn
    gives none), the first executable file of that name. Looked up once
    per payload (the Prepared is kept)."""
    search = os.environ.get("PATH") if env is None else env.get("PATH")
    found = shutil.which(name, path=os.defpath if search is None else search) if name else None
    if found is None:
        raise FileNotFoundError(errno.ENOENT, "not found in PATH "
                                f"({os.defpath if search is None else search})", name)
    return found


# No limit, as setrlimit takes it (rlim_t is unsigned; Python's resource
# module says -1).
RLIM_NONE = (1 << 64) - 1


def _limit_value(name: str, text: str) -> int | None:
    """A limit's soft or hard value: a number, or "inf" (none). None if not."""
    if text == "inf":
        return RLIM_NONE
    return int(text) if _number(text) and int(text) < RLIM_NONE else None


def _own_limit(value: int) -> int:
    """A value getrlimit gave, as _limit_value gives them."""
    return RLIM_NONE if value == resource.RLIM_INFINITY else value


def _nr_open() -> int:
    """The most descriptors the system lets a process have."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return RLIM_NONE


def _over(a: int, b: int) -> bool:
    """Is limit value ``a`` above ``b``? (No limit is above every number:
    RLIM_NONE is the largest.)"""
    return a > b


def _shown(value: int) -> str:
    return "unlimited" if value == RLIM_NONE else str(value)


# The largest user or group id: (uid_t)-1 means "unchanged" to the kernel.
ID_MAX = (1 << 32) - 2


def _user(text: str):
    """The passwd entry of a user named, or numbered, ``text``."""
    try:
        if _number(text) and int(text) > ID_MAX:
            raise KeyError(text)
        return pwd.getpwuid(int(text)) if _number(text) else pwd.getpwnam(text)
    except KeyError:
        raise ValueError(f"no user {text!r} on this machine") from None


def _number(text: str) -> bool:
    """Is ``text`` a number in ASCII digits (str.isdigit takes ٣ and ²)?"""
    return text.isascii() and text.isdigit()


def _group(text: str) -> int:
    if _number(text):
        if int(text) > ID_MAX:
            raise ValueError(f"group {text} is beyond the largest group id ({ID_MAX})")
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ValueError(f"no group {text!r} on this machine") from None


def _start_failure(program: Prepared, e: OSError) -> tuple:
    """The reply's error, status and detail for a start that failed with
    ``e``: a descriptor of the program that could not be made (the start
    names it: a file, a log, an inherited descriptor), its working
    directory, its cgroup, a limit or its identity, or the program."""
    if e.filename2 == "cwd":                   # its working directory
        return (Err.EXEC_FAILED, e.errno or errno.EIO,
                _words(f"cwd {e.filename}: {e.strerror}"))
    if e.filename2 == "cgroup":
        return (Err.EXEC_FAILED, e.errno or errno.EIO,
                _words(f"{program.path}: could not enter its cgroup: {e.strerror}"))
    if e.filename2 == "limit":
        resource_number = program.settings[0][e.filename][0]
        name = next(n for n, r in RLIMITS.items() if r == resource_number)
        return (Err.EXEC_FAILED, e.errno or errno.EIO,
                _words(f"{program.path}: limit {name}: {e.strerror}"))
    if e.filename2 == "identity":
        return (Err.EXEC_FAILED, e.errno or errno.EIO,
                _words(f"{program.path}: could not take on its user, group or umask: "
                       f"{e.strerror}"))
    if not isinstance(e.filename, int):
        return (Err.EXEC_FAILED, e.errno or errno.EIO,
                _words(f"{program.path}: {e.strerror}"))
    action = next(a for a in program.actions if a[1] == e.filename)
    if action[0] == "open":
        what = action[2]
    elif action[0] == "log":
        what = "(its log)"
    else:
        what = f"(process {action[2]}'s descriptor {action[3]})"
    return (Err.OPEN_FAILED, e.errno or errno.EIO,
            _words(f"{_stream_name(e.filename)} {what}: {e.strerror}"))


def _stream_name(fd: int) -> str:
    return {0: "stdin", 1: "stdout", 2: "stderr"}.get(fd, f"descriptor {fd}")


HANDLERS = {
    Op.SD_SPAWN: Worker.spawn,
    Op.SD_SPAN: Worker.span,
    Op.SD_KILL: Worker.kill,
    Op.SD_CLEANUP: Worker.cleanup,
    Op.SD_SIGNAL: Worker.send_signal,
}


def _ring(given: str, label: str) -> Ring:
    """The ring ``--requests``/``--replies`` names: fd:N is the memory file
    of a sealed ring the manager handed down (ringbuf.Ring.create_sealed),
    anything else a ring's name."""
    if given.startswith("fd:"):
        return Ring.attach_fd(int(given[3:]), label)
    return Ring.attach(given)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m spawnd_workers")
    ap.add_argument("--core", type=int, required=True)
    ap.add_argument("--parent-pid", type=int, default=-1,
                    help="the pid of the manager starting us: we end with it")
    ap.add_argument("--requests", required=True,
                    help="request ring (we consume): a name, or fd:N, a sealed ring inherited")
    ap.add_argument("--replies", required=True, help="reply ring (we produce): as --requests")
    ap.add_argument("--doorbell-fd", type=int, required=True,
                    help="our eventfd, rung by the manager")
    ap.add_argument("--manager-doorbell-fd", type=int, default=-1,
                    help="the manager's eventfd, rung when we reply")
    ap.add_argument("--kill-grace", type=float, default=DEFAULT_KILL_GRACE)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--runtime", default="", help="the runtime's name, given to domains")
    ap.add_argument("--simulate", action="store_true",
                    help="record dispatchers without starting processes (measurements)")
    ap.add_argument("--logs-dir", help="where captured output goes (none: not captured)")
    ap.add_argument("--log-max-bytes", type=int, default=LOG_MAX_BYTES)
    ap.add_argument("--log-backups", type=int, default=LOG_BACKUPS)
    ap.add_argument("--cgroup", help="the runtime's cgroup (cgroup containment; "
                                     "none: tree containment)")
    ap.add_argument("--history", type=int, default=4096,
                    help="the manager's history: this core's last that many ended "
                         "domains keep their logs")
    args = ap.parse_args(argv)
    worker = None

    def stop(signum, frame):
        if worker is None:
            raise SystemExit(1)     # no domain started yet: nothing to end
        worker.stopping = True
        os.eventfd_write(args.doorbell_fd, 1)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # SIGTERM when the manager dies, however it dies: our domains are ended
    # (shutdown) before we go, so none is left to init.
    die_with_parent(signal.SIGTERM, None if args.parent_pid < 0 else args.parent_pid)
    refuse_ptrace()          # its rings and our domains' caps: procmgr/osutil.py says why
    # A pidfd per live domain: as many descriptors as the hard limit allows
    # (the programs inherit the raised soft limit, as under systemd's
    # LimitNOFILE). Past it a spawn fails alone, EXEC_FAILED with EMFILE.
    raise_fd_limit()
    allowed = os.sched_getaffinity(0)       # before pinning: the rotator's CPUs
    if not args.no_pin:
        cpus = sorted(allowed)
        os.sched_setaffinity(0, {cpus[args.core % len(cpus)]})
    # Inherited descriptors stay ours: nothing of the runtime leaks into domains.
    for fd in (args.doorbell_fd, args.manager_doorbell_fd):
        if fd >= 0:
            os.set_inheritable(fd, False)
    requests, replies = _ring(args.requests, "requests"), _ring(args.replies, "replies")
    if args.manager_doorbell_fd >= 0:
        requests.set_doorbell(args.manager_doorbell_fd)
        replies.set_doorbell(args.manager_doorbell_fd)
        # Attached: a manager that gave us named rings may unlink them now.
        os.eventfd_write(args.manager_doorbell_fd, 1)
    worker = Worker(args.core, requests, replies, args.doorbell_fd, args.kill_grace,
                    args.runtime, args.simulate, args.logs_dir, args.log_max_bytes,
                    args.log_backups, allowed, args.history, args.cgroup)
    try:
        worker.run()
    except Closed:
        pass          # the manager went away: so do we, with our domains
    finally:
        worker.shutdown()
        requests.close()
        replies.close()
    return 0
