"""spawn's arguments as a subprocess user passes them, and a clear error
for each kind of bad one (procmgr/client/client.py, _program; the PATH
lookup is the worker's, spawnd_workers/worker.py)."""

from __future__ import annotations

import errno
import pathlib

import numpy as np
import pytest

from e2e_helpers import T, pm, rt  # noqa: F401 (fixtures)
from procmgr import Err, ProcMgmtError


def exit_of(pm, argv, **kw) -> int:
    return pm.wait(pm.spawn(argv, timeout=T, **kw), timeout=T)


def test_arguments_may_be_paths_and_bytes(pm, tmp_path):
    out = tmp_path / "out"
    code = exit_of(pm, [pathlib.Path("/bin/sh"), b"-c", "echo \"$0 $A\" > \"$1\"", b"zero", out],
                   env={b"A": pathlib.Path("/a/path"), "PATH": b"/bin"})
    assert code == 0 and out.read_text() == "zero /a/path\n"


def test_a_bare_program_name_is_looked_up_in_the_path_it_gets(pm):
    assert exit_of(pm, ["sh", "-c", "exit 3"]) == 3          # the runtime's PATH
    assert exit_of(pm, ["true"], env={"PATH": "/nonexistent:/bin"}) == 0
    with pytest.raises(ProcMgmtError, match="nosuchprogram: not found in PATH") as e:
        pm.spawn(["nosuchprogram"], timeout=T)
    assert e.value.code == Err.EXEC_FAILED and e.value.status == errno.ENOENT
    with pytest.raises(ProcMgmtError, match=r"true: not found in PATH \(/nonexistent\)"):
        pm.spawn(["true"], env={"PATH": "/nonexistent"}, timeout=T)
    # executable= runs another program under this argv[0]
    assert pm.run(["shown-as", "-c", "echo $0"], executable="/bin/sh").stdout == b"shown-as\n"


@pytest.mark.parametrize("argv, error, words", [
    ("/bin/echo hi", TypeError, "shlex.split"),
    (b"/bin/true", TypeError, "list of arguments"),
    ([], ValueError, "argv is empty"),
    (["/bin/echo", 3], TypeError, r"argv\[1\] must be str, bytes or os.PathLike, not int"),
    (["/bin/echo", "a\0b"], ValueError, "NUL"),
    (None, TypeError, "list of arguments, not NoneType"),
])
def test_bad_argv_is_refused_before_anything_is_sent(pm, argv, error, words):
    with pytest.raises(error, match=words):
        pm.spawn(argv, timeout=T)
    assert pm.in_flight == 0


@pytest.mark.parametrize("env, error, words", [
    ({"A": None}, TypeError, r"env\['A'\] must be str, bytes or os.PathLike, not NoneType"),
    ({"A": 1}, TypeError, r"env\['A'\]"),
    ({"A=B": "c"}, ValueError, "not a variable name"),
    ({"": "c"}, ValueError, "not a variable name"),
    (["A=1"], TypeError, "env must be a dict"),
])
def test_bad_env_is_refused_naming_the_key(pm, env, error, words):
    with pytest.raises(error, match=words):
        pm.spawn(["/bin/true"], env=env, timeout=T)


@pytest.mark.parametrize("core, error, words", [
    ("1", TypeError, "core must be an int, not str"),
    (1.0, TypeError, "core must be an int, not float"),
    (True, TypeError, "not bool"),
    (-1, ValueError, "out of range"),
    (70000, ValueError, "out of range"),
])
def test_a_core_that_is_no_core_number_is_refused(pm, core, error, words):
    with pytest.raises(error, match=words):
        pm.spawn(["/bin/true"], core=core, timeout=T)


def test_a_core_not_served_says_which_are(pm):
    with pytest.raises(ProcMgmtError, match="core 7; cores served: 0-1") as e:
        pm.spawn(["/bin/true"], core=7, timeout=T)
    assert e.value.code == Err.INVALID_SPAWND
    assert exit_of(pm, ["/bin/true"], core=np.int64(1)) == 0     # __index__ is enough


def test_a_domain_is_named_by_itself_or_its_token_everywhere(pm):
    d = pm.spawn(["/bin/sleep", "60"], timeout=T)
    assert pm.status(d.token, timeout=T).state == pm.status(d.id, timeout=T).state
    with pytest.raises(TypeError, match="wait needs the Domain or its token"):
        pm.wait(d.id, timeout=T)
    with pytest.raises(TypeError, match="kill needs the Domain or its token"):
        pm.kill(d.id, timeout=T)
    with pytest.raises(ValueError, match="not a domain token"):
        pm.kill("nonsense", timeout=T)
    pm.kill(d.token, timeout=T)
    assert pm.wait(d.token, timeout=T) == 9


def test_spawn_options_are_keyword_only(pm):
    with pytest.raises(TypeError):
        pm.spawn(["/bin/true"], 1)


def test_cwd_is_where_it_starts_relative_to_the_caller(pm, tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    assert pm.run(["pwd"], cwd=tmp_path, timeout=T).stdout == f"{tmp_path}\n".encode()
    monkeypatch.chdir(tmp_path)
    assert pm.run(["pwd"], cwd="sub", timeout=T).stdout == f"{tmp_path}/sub\n".encode()
    assert pm.run(["pwd"], cwd=b"sub", timeout=T).stdout == f"{tmp_path}/sub\n".encode()
    (tmp_path / "sub" / "tool").write_text("#!/bin/sh\necho tool ran\n")
    (tmp_path / "sub" / "tool").chmod(0o755)
    assert pm.run(["./tool"], cwd="sub", timeout=T).stdout == b"tool ran\n"   # as execve


def test_a_cwd_that_cannot_be_entered_says_so_and_starts_nothing(pm, tmp_path):
    with pytest.raises(ProcMgmtError) as e:
        pm.spawn(["/bin/true"], cwd=tmp_path / "missing", timeout=T)
    assert e.value.code == Err.EXEC_FAILED and e.value.status == errno.ENOENT
    assert f"cwd {tmp_path / 'missing'}: No such file or directory" in str(e.value)
    with pytest.raises(ValueError, match="NUL"):
        pm.spawn(["/bin/true"], cwd="/tm\0p")
    assert pm.domains(timeout=T) == []


def test_env_extra_adds_to_the_runtimes_environment_or_to_env(pm):
    import os

    script = 'echo "$HOME|$A|$B"'
    home = os.environ["HOME"]                  # the runtime was started from this one
    assert pm.run(["sh", "-c", script], env_extra={"A": "1"}, timeout=T).stdout == \
        f"{home}|1|\n".encode()
    assert pm.run(["sh", "-c", script], env={"PATH": "/bin:/usr/bin", "B": "2"},
                  env_extra={"A": "1"}, timeout=T).stdout == b"|1|2\n"
    assert pm.run(["sh", "-c", script], env_extra={"HOME": "/elsewhere"}, timeout=T).stdout \
        == b"/elsewhere||\n"
    with pytest.raises(TypeError, match="env_extra"):
        pm.spawn(["/bin/true"], env_extra={"A": 1})
    # PATH lookup uses the environment the program gets, added to.
    assert exit_of(pm, ["true"], env_extra={"PATH": "/nonexistent:/bin"}) == 0
    with pytest.raises(ProcMgmtError) as e:
        pm.spawn(["true"], env_extra={"PATH": "/nonexistent"}, timeout=T)
    assert e.value.code == Err.EXEC_FAILED


def test_bytes_that_are_not_utf8_reach_the_program_unchanged(pm, tmp_path):
    import os

    odd = bytes(tmp_path) + b"/\xff\xfe dir"
    os.mkdir(odd)
    out = pm.run(["/bin/sh", "-c", 'printf "%s|%s|" "$1" "$ODD"; pwd', "sh", b"\xe9t\xe9"],
                 cwd=odd, env_extra={"ODD": b"\x80\x81"}, timeout=T).stdout
    assert out == b"\xe9t\xe9|\x80\x81|" + odd + b"\n"
    d = pm.spawn(["/bin/echo", b"\xff"], timeout=T)
    assert [os.fsencode(a) for a in pm.status(d, timeout=T).argv] == [b"/bin/echo", b"\xff"]
    assert os.fsencode(pm.run(["/bin/pwd"], cwd=os.fsdecode(odd), timeout=T).stdout.strip()) \
        == odd
    with pytest.raises(ValueError, match="not text any bytes decode to"):
        pm.spawn(["/bin/echo", "\ud800"])


def test_a_cwd_too_long_is_refused_in_words(pm):
    with pytest.raises(ProcMgmtError) as e:
        pm.spawn(["/bin/true"], cwd="/" + "d" * 3000)
    assert e.value.code == Err.ARG_TOO_LONG and "cwd and caps" in str(e.value)
