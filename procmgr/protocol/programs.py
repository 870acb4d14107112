"""What a supervised program's requests carry (procmgr/manager/supervisor.py
serves them, procmgr/client/client.py sends them): the restart policy, the
rules for a name, and the request's layout -- u32 length of its JSON, the
JSON (an object: "do", "name", and what the action takes), then a spawn
payload (payloads.py) where the action takes one."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, fields

from procmgr.protocol.numbers import PROGRAM_WORDS_MAX

RESTART = ("no", "on-failure", "always")
# The states a program settles in: a request waiting on it is answered there.
SETTLED = ("STOPPED", "EXITED", "FATAL")
NAME_MAX = 128


@dataclass
class Policy:
    """When and how fast a program is started again.

    ``restart``: "no", "on-failure" (an exit code other than 0, or a death
    by a signal nobody asked for), or "always". The delay before a restart
    is ``backoff`` s, times ``backoff_factor`` for each quick end after
    the first, at most ``backoff_max``, spread by +-``jitter`` (a
    fraction) so that programs failing together do not come back
    together; an incarnation that stayed up ``reset_after`` s starts the
    delay over. More than ``max_restarts`` restarts within ``period`` s
    and the program is given up (FATAL); ``max_restarts=None`` retries
    without end. Unlike supervisord's (one more second per try, no cap,
    no jitter), and like OTP's intensity, both bounds are the user's."""

    restart: str = "on-failure"
    backoff: float = 0.1
    backoff_factor: float = 2.0
    backoff_max: float = 30.0
    jitter: float = 0.1
    reset_after: float = 10.0
    max_restarts: int | None = 5
    period: float = 60.0

    def __post_init__(self):
        if self.restart not in RESTART:
            raise ValueError(f"restart must be one of {', '.join(RESTART)}, "
                             f"not {self.restart!r}")
        for name in ("backoff", "backoff_max", "jitter", "reset_after", "period"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number of at least 0, not {value!r}")
        if isinstance(self.backoff_factor, bool) or \
                not isinstance(self.backoff_factor, (int, float)) or \
                not 1 <= self.backoff_factor <= 1e6:
            raise ValueError(f"backoff_factor must be a number from 1 up, "
                             f"not {self.backoff_factor!r}")
        if self.jitter > 1:
            raise ValueError(f"jitter is a fraction of the delay, 0..1, not {self.jitter!r}")
        if self.max_restarts is not None and (
                isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int)
                or self.max_restarts < 0):
            raise ValueError(f"max_restarts must be a whole number of at least 0 or None, "
                             f"not {self.max_restarts!r}")

    @classmethod
    def of(cls, given: dict) -> Policy:
        """From a request's words: unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"unknown restart policy key {unknown[0]!r} "
                             f"(known: {', '.join(sorted(known))})")
        return cls(**given)

    def delay(self, quick_ends: int) -> float:
        """The delay before the restart after ``quick_ends`` ends in a row
        that came sooner than ``reset_after``."""
        k = max(quick_ends - 1, 0)
        if self.backoff <= 0:
            return 0.0
        # The power only up to where the cap is reached: 2.0 ** 1025 overflows.
        if self.backoff_factor > 1 and k > 0 and \
                k >= math.log(max(self.backoff_max / self.backoff, 1)) / math.log(self.backoff_factor):
            d = self.backoff_max
        else:
            d = min(self.backoff_max, self.backoff * self.backoff_factor ** k)
        return d * (1 + random.uniform(-self.jitter, self.jitter)) if d else 0.0


def check_name(name) -> str:
    """A program's name, checked: what ``procmgr start NAME`` and a
    ``NAME:*`` group can say without quoting (a file's ``numprocs`` names
    its copies NAME:0, NAME:1, ...)."""
    if not isinstance(name, str) or not name or len(name) > NAME_MAX or \
            any(c in name for c in "/*") or not name.isprintable() or name.strip() != name:
        raise ValueError(f"a program's name is 1..{NAME_MAX} printable characters without "
                         f"'/' or '*', and no spaces around it: {name!r}")
    return name


def encode_request(request: dict, spawn: bytes = b"") -> bytes:
    text = json.dumps(request).encode()
    return len(text).to_bytes(4, "little") + text + spawn


def decode_request(payload: bytes) -> tuple[dict, bytes]:
    """A program request: u32 length of its JSON, the JSON (an object),
    then a spawn payload where the action takes one."""
    if len(payload) < 4:
        raise ValueError("program request shorter than its length field")
    n = int.from_bytes(payload[:4], "little")
    if n > PROGRAM_WORDS_MAX:
        raise ValueError(f"program request's JSON is {n} bytes, over the "
                         f"{PROGRAM_WORDS_MAX}-byte limit")
    if n > len(payload) - 4:
        raise ValueError(f"program request says {n} bytes of JSON, has {len(payload) - 4}")
    try:
        request = json.loads(payload[4:4 + n])
    except (ValueError, RecursionError) as e:
        raise ValueError(f"program request is not JSON: {e}") from None
    if not isinstance(request, dict):
        raise ValueError("program request is not a JSON object")
    return request, payload[4 + n:]
