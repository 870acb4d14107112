"""procmgr.toml read and checked (procmgr/client/config.py): a bad file is
one error naming the file, the line of the program's table, and the key;
nothing is started from it."""

import pytest

from procmgr.client import logs
from procmgr.client.config import ConfigError, load

GOOD = """
[programs.web]
argv = ["./server", "--port", "8080"]
numprocs = 3
restart = "always"
stdout = "null"
stderr = "stdout"
depends_on = ["db"]

[programs.db]
argv = ["./db"]
core = 1
env = { MODE = "prod" }
stop_signal = "INT"
stop_timeout = 10
max_restarts = 10
"""


def write(tmp_path, text: str) -> str:
    path = tmp_path / "procmgr.toml"
    path.write_text(text)
    return str(path)


def test_a_good_file_in_start_order(tmp_path):
    programs = load(write(tmp_path, GOOD), cores=2)
    assert [p.name for p in programs] == ["db", "web:0", "web:1", "web:2"]
    db, web0, web1, web2 = programs
    assert [web0.core, web1.core, web2.core] == [0, 1, 0]          # spread over the cores
    assert db.core == 1 and db.options["env_extra"] == {"MODE": "prod"}
    assert db.options["stop_signal"] == 2 and db.options["stop_timeout"] == 10
    assert db.policy == {"max_restarts": 10}
    assert web0.options == {"stdout": logs.DEVNULL, "stderr": logs.STDOUT}
    assert web0.digest == web2.digest != db.digest


def test_the_digest_follows_the_table(tmp_path):
    before = {p.name: p.digest for p in load(write(tmp_path, GOOD), cores=2)}
    after = {p.name: p.digest for p in load(write(tmp_path, GOOD.replace('"8080"', '"8081"')),
                                            cores=2)}
    assert before["db"] == after["db"] and before["web:0"] != after["web:0"]


def test_max_restarts_minus_one_retries_without_end(tmp_path):
    """TOML has no null: -1 says what max_restarts=None says in Python
    (and --max-restarts -1 on the command line); -2 is an error."""
    [p] = load(write(tmp_path, '[programs.a]\nargv = ["x"]\nmax_restarts = -1\n'), cores=1)
    assert p.policy == {"max_restarts": None}
    with pytest.raises(ConfigError, match="max_restarts must be"):
        load(write(tmp_path, '[programs.a]\nargv = ["x"]\nmax_restarts = -2\n'), cores=1)


def test_limits_and_identity_are_spawn_options(tmp_path):
    [p] = load(write(tmp_path, '[programs.a]\nargv = ["x"]\nuser = "nobody"\numask = 0o027\n'
                               'limits = { nofile = [64, 128], cpu = "unlimited", core = 0 }\n'),
               cores=1)
    assert p.options["limits"] == {"nofile": (64, 128), "cpu": None, "core": 0}
    assert (p.options["user"], p.options["umask"]) == ("nobody", 0o027)


@pytest.mark.parametrize("text, words", [
    ('[programs.a]\nargv = ["x"]\n\n[programs.b]\nargv = ["y"]\nrestrat = "always"\n',
     r":4: \[programs.b\]: unknown key 'restrat'"),
    ('[programs.a]\nargv = "x"\n', r":1: \[programs.a\]: argv: a non-empty list"),
    ('[programs.a]\nargv = ["x"]\ncore = 5\n', r"core 5 is not one of this runtime's 0..1"),
    ('[programs.a]\nargv = ["x"]\ncore = 0\nnumprocs = 2\n', "give one of core, cores"),
    ('[programs.a]\nargv = ["x"]\nrestart = "sometimes"\n', "restart must be one of"),
    ('[programs.a]\nargv = ["x"]\nbackoff = -1\n', "backoff must be a number"),
    ('[programs.a]\nargv = ["x"]\nstop_signal = "NOPE"\n', "stop_signal: a signal name"),
    ('[programs.a]\nargv = ["x"]\ndepends_on = ["z"]\n', "depends_on: no program 'z'"),
    ('[programs.a]\nargv = ["x"]\ndepends_on = ["b"]\n[programs.b]\nargv = ["y"]\n'
     'depends_on = ["a"]\n', "depends_on makes a cycle: a -> b -> a"),
    ('[programs.a]\nargv = ["x"]\nrestart = always\n', r"procmgr.toml: .*line 3"),
    ('[service]\nx = 1\n', "unknown top-level key 'service'"),
    ('[programs."a:b"]\nargv = ["x"]\n', "has no ':'"),
    ('[programs.a]\nargv = ["x"]\nlimits = { stack = 1 }\n', "'stack' is not a limit"),
    ('[programs.a]\nargv = ["x"]\nlimits = { nofile = -3 }\n', "limit nofile must be"),
    ('[programs.a]\nargv = ["x"]\numask = 0o1000\n', "umask must be a number"),
])
def test_a_bad_file_is_one_error_saying_where(tmp_path, text, words):
    with pytest.raises(ConfigError, match=words) as e:
        load(write(tmp_path, text), cores=2)
    assert str(e.value).startswith(str(tmp_path / "procmgr.toml"))
