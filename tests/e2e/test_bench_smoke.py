"""The benchmarks run (tiny sizes) so they never rot; the figures are
checked by `make bench`, not here."""

from bench.peers import compare
from bench.ring_report import table


def test_ring_comparison_runs_and_reports():
    r = compare(rounds=1, scale=0.01)
    for key in ("ring", "faster_fifo", "mp_pipe", "mp_queue", "ring_batch"):
        assert r["medians"][key] > 0
    assert 0 <= r["medians"]["ring_idle_cpu"] < 1
    text = table(r)
    assert "ringbuf `push`/`pop`" in text and "faster" in text


def test_spawn_comparison_runs():
    from bench.spawn import compare as spawn_compare

    from bench.spawn import table

    r = spawn_compare(n=10, rounds=2, block=3, blocks=3)
    assert all(v > 0 for v in r["medians"].values())
    assert r["latency_us"][0] > 0
    for k in (1, 8):    # the ratio is the median of the blocks' or rounds' own ratios
        low, high, _ = r[f"interval{k}"]
        assert 0 < low <= r[f"ratio{k}"] <= high
    assert f"{r['ratio1']:.2f}x" in table(r) and "confidence" in table(r)


def test_async_comparison_runs():
    from bench.aio import compare as aio_compare
    from bench.aio import table

    r = aio_compare(block=3, blocks=3, many=20, rounds=2)
    assert all(v > 0 for v in r["medians"].values())
    low, high, _ = r["interval1"]
    assert 0 < low <= r["ratio1"] <= high and r["ratio_many"] > 0
    assert "create_subprocess_exec" in table(r) and f"{r['ratio1']:.2f}x" in table(r)


def test_scale_runs_every_curve_and_flags_oversubscription():
    import os

    from bench.scale import measure, plot, table

    over = (os.cpu_count() or 1) + 1
    r = measure(quick=True, cores=(1, over), live_simulated=(100, 300), live_real=(5, 10),
                clients=(2, 6), domains=20, samples=20, spawns=10)
    assert [row["oversubscribed"] for row in r["cores"]] == [False, True]
    assert all(row["control_plane_per_s"] > 0 and row["spawn_per_s"] > 0 and row["up_s"] > 0
               and 0 < row["worker_uss_mb"] < row["manager_rss_mb"] for row in r["cores"])
    assert [row["live"] for row in r["live_simulated"]] == [100, 300]
    assert [row["clients"] for row in r["clients"]] == [2, 6]
    for curve in r.values():
        assert all(0 < row["p50_us"] <= row["p99_us"] for row in curve)
    assert "oversubscribed" in table(r) and "300" in table(r)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"scale-{os.getpid()}.png")
    try:
        plot(r, path)
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_ab_runs_two_runtimes_and_refuses_a_bad_assignment():
    import pytest

    from bench.ab import compare, table

    # B's switch is one nothing reads: the point is that both sides run.
    r = compare([], ["PROCMGR_AB_SMOKE=1"], block=3, blocks=2)
    assert all(v > 0 for v in r["rates"].values())
    for median, (low, high, _) in r["ratios"].values():
        assert 0 < low <= median <= high
    assert "b/a" in table(r) and "PROCMGR_AB_SMOKE=1" in table(r)
    with pytest.raises(ValueError, match="NAME=VALUE"):
        compare([], ["PYTHONPATH"], block=1, blocks=1)
    control = compare([], [], block=20, blocks=2, cores=1, control_plane=True)
    assert set(control["rates"]) == {"a", "b"} and all(v > 0 for v in control["rates"].values())
    assert "control plane" in table(control) and "raw" not in table(control)


def test_ab_command_line_refuses_bad_input_before_starting_anything(capsys):
    import pytest

    from bench.ab import main

    for argv, why in ((["--b", "FOO"], "'FOO' is not NAME=VALUE"),
                      (["--blocks", "0"], "at least 1")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and why in capsys.readouterr().err


def test_interleaved_blocks_reverse_their_order_every_other_block():
    from bench.spawn import interleaved

    calls = []
    measures = {name: (lambda name=name: calls.append(name) or len(calls)) for name in "abc"}
    rates = interleaved(measures, 3)
    assert "".join(calls) == "abccbaabc"
    assert rates == {"a": [1, 6, 7], "b": [2, 5, 8], "c": [3, 4, 9]}


def test_output_comparison_runs_and_captures():
    from bench.output import compare, table

    r = compare(blocks=2, block=3, rounds=1, history=10)
    assert all(v > 0 for v in r["spawn"].values()) and all(v > 0 for v in r["write"].values())
    text = table(r)
    assert f"{r['ratio']['write']:.2f}x" in text and "PIPE + communicate" in text


def test_live_domains_comparison_runs():
    from bench.live import measure, table

    r = measure(20, blocks=2, block=3)
    assert r["live"] == 20 and r["ratio"] > 0
    assert "20" in table([r])


def test_many_clients_comparison_runs():
    import procmgr
    from bench.clients import run

    with procmgr.Runtime(cores=2, simulate=True) as rt:
        r = run(rt, 3, 20)
    assert r["clients"] == 3 and r["requests_per_s"] > 0 and 0 < r["fairness"] <= 1
    assert 0 <= r["fairness_together"] <= 1 and len(r["shares"]) == 3
    assert r["client_cpu_us"] > 0 and r["manager_cpu_us"] > 0
    from bench.clients import table
    assert "all running" in table([r])


def test_restart_latency_comparison_runs():
    from bench.supervise import measure, table

    r = measure(restarts=10, supervisord_restarts=2)
    assert r["procmgr"]["n"] == 10 and r["procmgr"]["median_ms"] > 0
    assert r["supervisord"]["n"] == 2 and r["ratio"] > 0
    assert "supervisord/procmgr" in table(r)
