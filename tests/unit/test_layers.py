"""The packages' layers, as the tree shows them (docs/design.md, "Layout"):

    client -> protocol -> manager <- protocol <- worker, all on ringbuf

checked on the import statements themselves (every one, also those inside
functions), so that an edge that crosses a layer fails here, not in a
review. Read with ast: nothing is imported or run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What each layer may import of the project (anything else of the project
# is refused); the standard library and third-party packages are free.
ALLOWED = {
    "ringbuf": {"ringbuf"},
    "procmgr/protocol": {"ringbuf", "procmgr.protocol"},
    "spawnd_workers": {"ringbuf", "procmgr.protocol", "procmgr.errors", "procmgr.osutil",
                       "procmgr.containment", "spawnd_workers"},
    "procmgr/manager": {"ringbuf", "procmgr.protocol", "procmgr.errors", "procmgr.osutil",
                        "procmgr.containment", "procmgr.manager"},
    "procmgr/client": {"ringbuf", "procmgr.protocol", "procmgr.errors", "procmgr.osutil",
                       "procmgr.containment", "procmgr.client"},
    "procmgr/testing": {"ringbuf", "procmgr.protocol", "procmgr.errors", "procmgr.manager",
                        "procmgr.client", "procmgr.testing"},
}
PROJECT = ("ringbuf", "procmgr", "spawnd_workers", "bench", "tests")


def imports_of(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from procmgr.manager import _core" names procmgr.manager._core
            names += [f"{node.module}.{a.name}" for a in node.names]
    return [n for n in names if n.split(".")[0] in PROJECT]


def allowed(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_what_is_below_it(layer):
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"no Python files under {layer}"
    wrong = [f"{f.relative_to(ROOT)} imports {name}" for f in files
             for name in imports_of(f) if not allowed(name, ALLOWED[layer])]
    assert not wrong, "\n".join(wrong)


def test_the_library_never_imports_bench_or_the_tests():
    """bench is a source checkout's, loaded by `procmgr bench` alone."""
    wrong = []
    for top in ("procmgr", "spawnd_workers", "ringbuf"):
        for f in sorted((ROOT / top).rglob("*.py")):
            for name in imports_of(f):
                if name.split(".")[0] == "tests" or (
                        name.split(".")[0] == "bench" and f.name != "cli.py"):
                    wrong.append(f"{f.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_reader_sees_imports_inside_functions_too():
    """The check above is only as good as this reader: the worker's import
    of the protocol is found, and so is the CLI's lazy one of bench."""
    assert any(n.startswith("procmgr.protocol.") for n in imports_of(ROOT / "spawnd_workers/worker.py"))
    assert "bench.report" in imports_of(ROOT / "procmgr/cli.py")
    assert not allowed("procmgr.client.client", ALLOWED["procmgr/manager"])
