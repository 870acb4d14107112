"""atheris target for the message decoders: ``python fuzz_decoder_target.py
[libFuzzer options] [corpus dir]``. The input is cut into slots of sizes it
chooses itself (mostly whole 64-byte slots), fed to one Decoder, and every
payload to every payload decoder (checks in decoder_fuzz.py). Run bounded
by tests/stress/test_fuzz_decoder.py."""

import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy  # noqa: E402,F401  (imported before instrumenting: not ours to fuzz)

with atheris.instrument_imports(include=["procmgr", "decoder_fuzz"]):
    from decoder_fuzz import check_payload, check_slots


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    slots = []
    while fdp.remaining_bytes():
        size = 64 if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 130)
        slots.append(fdp.ConsumeBytes(size))
    check_slots(slots)
    check_payload(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
