# Everything else is in pyproject.toml; these two have no pyproject form.
from setuptools import Extension, setup


PROTOCOL_H = "procmgr/protocol/protocol.h"
CORE_SOURCES = ["_core.c", "_loop.c", "_pending.c"]
CORE_HEADERS = ["_core.h", "_map.h"]


def c_module(name: str, sources, include_dirs=(), depends=()) -> Extension:
    """A CPython extension that works on rings and speaks the protocol: its
    source(s) plus the ring, with protocol.h in view. -Werror=switch: an op
    added to protocol.h and not to its switches does not build."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    return Extension(name, sources=sources + ["ringbuf/_ring.c"],
                     include_dirs=["ringbuf", "procmgr/protocol", *include_dirs],
                     extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra",
                                         "-Werror=switch"],
                     depends=[PROTOCOL_H, *depends])


setup(
    # The ring itself, and every call but the single-message hot path.
    # The protocol's numbers and header layout, for Python, from protocol.h.
    cffi_modules=["ringbuf/build.py:ffibuilder", "procmgr/protocol/build.py:ffibuilder"],
    ext_modules=[
        # push/pop by METH_FASTCALL: see the top of ringbuf/_fastpath.c for why.
        c_module("ringbuf._fastpath", "ringbuf/_fastpath.c"),
        # The protocol's message object and one-slot send/take: see the top
        # of procmgr/protocol/_wire.c for why.
        c_module("procmgr.protocol._wire", "procmgr/protocol/_wire.c",
                 depends=["procmgr/protocol/_wire.h"]),
        # The manager's state and handlers, and its loop's arming, sleeping
        # and waking: see procmgr/manager/core/README.md.
        c_module("procmgr.manager._core", [f"procmgr/manager/core/{f}" for f in CORE_SOURCES],
                 include_dirs=["procmgr/manager/core"],
                 depends=["procmgr/protocol/_wire.h",
                          *(f"procmgr/manager/core/{f}" for f in CORE_HEADERS)]),
        # The worker's spawn and exit path: see the top of
        # spawnd_workers/_spawnd.c for why.
        # and its log rotator (spawnd_workers/_rotator.h says why).
        c_module("spawnd_workers._spawnd", ["spawnd_workers/_spawnd.c", "spawnd_workers/_rotator.c"],
                 depends=["spawnd_workers/_rotator.h"]),
    ],
)
