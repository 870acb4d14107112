# Everything else is in pyproject.toml; these two have no pyproject form.
from setuptools import Extension, setup

setup(
    # The ring itself, and every call but the single-message hot path.
    cffi_modules=["ringbuf/build.py:ffibuilder"],
    # push/pop by METH_FASTCALL: see the top of ringbuf/_fastpath.c for why.
    ext_modules=[
        Extension(
            "ringbuf._fastpath",
            sources=["ringbuf/_fastpath.c", "ringbuf/_ring.c"],
            include_dirs=["ringbuf"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"],
        ),
        # The protocol's message object and one-slot send/take: see the top
        # of procmgr/_wire.c for why.
        Extension(
            "procmgr._wire",
            sources=["procmgr/_wire.c", "ringbuf/_ring.c"],
            include_dirs=["ringbuf"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"],
            depends=["procmgr/_wire.h"],
        ),
        # The manager loop's arming, sleeping and waking: see the top of
        # procmgr/_loop.c for why.
        Extension(
            "procmgr._loop",
            sources=["procmgr/_loop.c", "ringbuf/_ring.c"],
            include_dirs=["ringbuf"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"],
        ),
        # The worker's spawn and exit path: see the top of
        # spawnd_workers/_spawnd.c for why.
        Extension(
            "spawnd_workers._spawnd",
            sources=["spawnd_workers/_spawnd.c", "ringbuf/_ring.c"],
            include_dirs=["ringbuf", "procmgr"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"],
            depends=["procmgr/_wire.h"],
        ),
    ],
)
