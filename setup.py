# Everything else is in pyproject.toml; these two have no pyproject form.
from setuptools import Extension, setup


PROTOCOL_H = "procmgr/protocol/protocol.h"
CORE_SOURCES = ["table.c", "peers.c", "handlers.c", "serve.c", "module.c", "_loop.c", "_pending.c"]
CORE_HEADERS = ["_core.h", "core.h", "_map.h"]


def c_module(name: str, sources, include_dirs=(), depends=(), lto=False) -> Extension:
    """A CPython extension that works on rings and speaks the protocol: its
    source(s) plus the ring, with protocol.h in view. -Werror=switch: an op
    added to protocol.h and not to its switches does not build. lto: its
    files are optimised as one at link time (-flto), for a hot path split
    across files."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    lto_args = ["-flto"] if lto else []
    return Extension(name, sources=sources + ["ringbuf/_ring.c"],
                     include_dirs=["ringbuf", "procmgr/protocol", *include_dirs],
                     extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra",
                                         "-Werror=switch", *lto_args],
                     extra_link_args=lto_args,
                     depends=[PROTOCOL_H, "ringbuf/_ring.h", "ringbuf/_ring_py.h", *depends])


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
                 depends=["procmgr/protocol/_wire.h", "procmgr/protocol/spawn_payload.h"]),
        # The manager's state and handlers, and its loop's arming, sleeping
        # and waking: see procmgr/manager/core/README.md. One hot path over
        # several files, so link-time optimised (core.h says why).
        c_module("procmgr.manager._core", [f"procmgr/manager/core/{f}" for f in CORE_SOURCES],
                 include_dirs=["procmgr/manager/core"],
                 depends=["procmgr/protocol/_wire.h", "procmgr/protocol/spawn_payload.h",
                          *(f"procmgr/manager/core/{f}" for f in CORE_HEADERS)],
                 lto=True),
        # The worker's spawn and exit path: see the top of
        # spawnd_workers/_spawnd.c for why.
        # and its log rotator (spawnd_workers/_rotator.h says why).
        c_module("spawnd_workers._spawnd", ["spawnd_workers/_spawnd.c", "spawnd_workers/_rotator.c"],
                 depends=["spawnd_workers/_rotator.h"]),
    ],
)
