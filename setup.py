# Everything else is in pyproject.toml; these two have no pyproject form.
from setuptools import Extension, setup


def c_module(name: str, sources, include_dirs=("ringbuf",), depends=()) -> Extension:
    """A CPython extension that works on rings: its source(s) plus the ring."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    return Extension(name, sources=sources + ["ringbuf/_ring.c"], include_dirs=list(include_dirs),
                     extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"],
                     depends=list(depends))


setup(
    # The ring itself, and every call but the single-message hot path.
    cffi_modules=["ringbuf/build.py:ffibuilder"],
    ext_modules=[
        # push/pop by METH_FASTCALL: see the top of ringbuf/_fastpath.c for why.
        c_module("ringbuf._fastpath", "ringbuf/_fastpath.c"),
        # The protocol's message object and one-slot send/take: see the top
        # of procmgr/_wire.c for why.
        c_module("procmgr._wire", "procmgr/_wire.c", depends=["procmgr/_wire.h"]),
        # The manager's state and handlers, and its loop's arming, sleeping
        # and waking: see the tops of procmgr/_core.c and procmgr/_loop.c for why.
        c_module("procmgr._core", ["procmgr/_core.c", "procmgr/_loop.c", "procmgr/_pending.c"],
                 include_dirs=["ringbuf", "procmgr"],
                 depends=["procmgr/_wire.h", "procmgr/_core.h", "procmgr/_map.h"]),
        # The worker's spawn and exit path: see the top of
        # spawnd_workers/_spawnd.c for why.
        # and its log rotator (spawnd_workers/_rotator.h says why).
        c_module("spawnd_workers._spawnd", ["spawnd_workers/_spawnd.c", "spawnd_workers/_rotator.c"],
                 include_dirs=["ringbuf", "procmgr"],
                 depends=["procmgr/_wire.h", "spawnd_workers/_rotator.h"]),
    ],
)
