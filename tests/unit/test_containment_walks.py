"""procmgr/containment.py's walks, without a runtime: a group tree nested
deeper than Python's recursion limit."""

from __future__ import annotations

import os

from procmgr import containment


def test_a_tree_deeper_than_the_recursion_limit_is_walked_and_removed(tmp_path):
    """A domain that may write its cgroup can nest groups in it; the walks
    (members, remove) use a list: 1,100 levels, past Python's 1,000."""
    top = tmp_path / "g0"
    path = top
    os.mkdir(top)
    for _ in range(1100):                       # os.makedirs recurses too
        path = path / "a"
        os.mkdir(path)
    (path / "cgroup.procs").write_text("")      # a file: members reads it, nothing listed
    assert containment.members(str(top)) == []
    os.remove(path / "cgroup.procs")
    assert containment.remove(str(top))
    assert not top.exists()
