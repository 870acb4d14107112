"""cffi build script for the protocol's numbers (out-of-line API mode).

Python reads the ops, flags, error codes, states, limits and the header
layout from the same text the C includes: the block of protocol.h between
the CDEF-BEGIN and CDEF-END markers. Compiling it against the header
itself (API mode) means cffi takes every value and offset from the C
compiler, so the two cannot disagree.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def protocol_cdef() -> str:
    header = (HERE / "protocol.h").read_text()
    begin = header.index("/* CDEF-BEGIN */") + len("/* CDEF-BEGIN */")
    end = header.index("/* CDEF-END */")
    return header[begin:end]


ffibuilder = FFI()
ffibuilder.cdef(protocol_cdef())
ffibuilder.set_source(
    "procmgr.protocol._defs",
    '#include "protocol.h"',
    # Relative to the project root: setuptools builds from there.
    include_dirs=["procmgr/protocol"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
