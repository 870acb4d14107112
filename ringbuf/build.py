"""cffi build script for the ring (out-of-line API mode).

The C declarations are not written twice: the cdef is the block of
`_ring.h` between the CDEF-BEGIN and CDEF-END markers.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def ring_cdef() -> str:
    header = (HERE / "_ring.h").read_text()
    begin = header.index("/* CDEF-BEGIN */") + len("/* CDEF-BEGIN */")
    end = header.index("/* CDEF-END */")
    return header[begin:end]


ffibuilder = FFI()
ffibuilder.cdef(ring_cdef())
ffibuilder.set_source(
    "ringbuf._cffi_ring",
    '#include "_ring.h"',
    # Paths relative to the project root: setuptools builds from there.
    sources=["ringbuf/_ring.c"],
    include_dirs=["ringbuf"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
