"""bcc-compare's statistics and records, on made-up windows (no kernel needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pybpfmap.bcc_compare import compare, result, tools
from pybpfmap.bcc_compare.launcher import MODES
from pybpfmap.bcc_compare.measurement import Measurement, ModeRun, Window, round_order
from pybpfmap.cli import build_parser, main
from pybpfmap.commands.args import command_parser, guest_argv
from pybpfmap.guest import Accel
from pybpfmap.records import RecordError, to_json
from pybpfmap.stats import MeanCI, mean_ci, t_cdf, t_quantile
from pybpfmap.vm import catalog
from pybpfmap.vm.outcome import Outcome, VmResult
from pybpfmap.vm.relay import GuestRun

# Student's t 0.975 quantiles (any statistics table).
T975 = {1: 12.7062, 2: 4.3027, 4: 2.7764, 9: 2.2622, 29: 2.0452, 1000: 1.9623}


@pytest.mark.parametrize("df, q", T975.items())
def test_t_quantile_matches_tables(df: int, q: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-q, abs=1e-4)
    assert t_cdf(q, df) == pytest.approx(0.975, abs=1e-5)


def test_mean_ci() -> None:
    c = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # 3 ± 2.7764 · 1.5811 / √5
    assert (c.mean, c.n) == (3.0, 5)
    assert c.low == pytest.approx(1.03676, abs=1e-4)
    assert c.high == pytest.approx(4.96324, abs=1e-4)
    assert not c.spans_zero
    assert mean_ci([-1.0, 1.0, 0.5]).spans_zero
    one = mean_ci([7.0])
    assert (one.mean, one.low, one.high, one.defined) == (7.0, None, None, False)


@pytest.mark.parametrize("diff, expected", [
    (MeanCI(120.0, 80.0, 160.0, 5), "NO_PREALLOC costs 120 ns/event more (95% CI 80..160 ns)"),
    (MeanCI(-50.0, -90.0, -10.0, 5), "NO_PREALLOC costs 50 ns/event less (95% CI -90..-10 ns)"),
    (MeanCI(20.0, -30.0, 70.0, 5), "no significant difference (95% CI -30..70 ns)"),
])
def test_verdict(diff: MeanCI, expected: str) -> None:
    assert result.verdict(diff) == expected


def test_rounds_interleave_abab() -> None:
    assert [round_order(r) for r in range(3)] == [
        ("baseline", "shipped", "noprealloc"), ("baseline", "noprealloc", "shipped"),
        ("baseline", "shipped", "noprealloc")]


def _measurement(rates: dict[str, list[float]]) -> Measurement:
    tool = tools.TOOLS["runqlat"]
    runs = len(rates["baseline"])
    m = Measurement(tool, 1.0, runs, 30.0, isolation="checked")
    for r in range(runs):
        for slot in round_order(r):
            m.windows.append(Window(r, slot, int(rates[slot][r]), 1.0))
    for mode, flags in zip(MODES, (0, 1), strict=True):
        m.modes[mode] = ModeRun(mode, {"maps": {"start": {
            "id": 7, "name": "start", "type": 1, "map_flags": flags, "max_entries": 10240,
            "key_size": 4, "value_size": 8}}, "unused": []}, 3, 1.5, 0, "usecs : count", 12)
    return m


def test_measured_record_pairs_rounds() -> None:
    """Cost per event against the same round's baseline; the difference per
    round does not depend on the baseline at all."""
    m = _measurement({"baseline": [1e6, 2e6, 1e6], "shipped": [5e5, 5e5, 5e5],
                      "noprealloc": [2.5e5, 2.5e5, 2.5e5]})
    rec = result.measured(m, "host", "6.x", None, "0.26.0")
    assert rec.status == result.OK
    assert rec.shipped.map_flags == {"start": 0} and rec.noprealloc.map_flags == {"start": 1}
    # rounds: 1000, 1500, 1000 ns for shipped
    assert rec.shipped.overhead_ns.mean == pytest.approx(3500 / 3)
    # NO_PREALLOC - shipped = 1/2.5e5 - 1/5e5 = 2000 ns in every round: zero width
    assert rec.difference_ns.mean == pytest.approx(2000)
    assert rec.difference_ns.low == pytest.approx(2000)
    assert rec.verdict == "NO_PREALLOC costs 2000 ns/event more (95% CI 2000..2000 ns)"
    assert "start 0x0->0x1" in result.render_text([rec])
    assert "| runqlat | host | start 0x0->0x1 |" in result.render_markdown([rec])


def test_noise_is_no_significant_difference() -> None:
    m = _measurement({"baseline": [1e6] * 4, "shipped": [5.0e5, 4.8e5, 5.1e5, 4.9e5],
                      "noprealloc": [4.9e5, 5.0e5, 4.8e5, 5.1e5]})
    rec = result.measured(m, "host", "6.x", None, "0.26.0")
    assert rec.verdict.startswith("no significant difference (95% CI -")


def test_records_round_trip_strictly() -> None:
    m = _measurement({"baseline": [1e6, 1e6], "shipped": [5e5, 6e5],
                      "noprealloc": [4e5, 5e5]})
    recs = [result.measured(m, "host", "6.x", None, "0.26.0"),
            result.not_run(tools.TOOLS["opensnoop"], result.NOT_COMPARABLE,
                           "no hash map to rewrite", "vm:bookworm", "6.1", Accel.TCG, "0.26.0")]
    data = json.loads(json.dumps(to_json(recs)))
    assert result.load(data) == recs
    assert recs[1].verdict == "not comparable: no hash map to rewrite"
    assert recs[1].baseline is None and recs[1].windows == []
    data[0]["surprise"] = 1
    with pytest.raises(RecordError, match="surprise"):
        result.load(data)


def test_guest_argv_narrows_tools_and_drops_host_options() -> None:
    """What the guest runs: the typed command line without --kernel, --results and
    --tools (host-only, computed from the parser), then the tools that need kprobes."""
    vm_tools = [tools.TOOLS["tcpconnect"], tools.TOOLS["biolatency"]]
    typed = ["bcc-compare", "--kernel", "bookworm", "--results", "/tmp/x", "--tools",
             "runqlat", "tcpconnect", "--runs", "6", "--json"]
    parser = build_parser()
    args = parser.parse_args(typed)
    relayed = guest_argv(command_parser(parser, args), typed)
    assert compare.guest_argv(relayed, vm_tools) == [
        "bcc-compare", "--runs", "6", "--json", "--tools", "tcpconnect,biolatency"]


def _guest_run(kernel: str, data, problem: str | None) -> GuestRun:
    """What relay.run_on_kernels gives for one kernel, built from the real
    record types (by field name: a renamed field breaks this test)."""
    vm = VmResult(outcome=Outcome.TIMEOUT if problem else Outcome.PASSED,
                  message=problem or "command passed", exit_code=None if problem else 0,
                  accel=Accel.TCG, kernel=kernel, kernel_release="6.1.0",
                  results_dir=Path(f"/r/{kernel}"))
    return GuestRun(kernel=kernel, argv=["bcc-compare", "--json"], vm=vm, data=data,
                    problem=problem)


def test_vm_failure_gives_failed_records_with_the_vms_outcome(monkeypatch) -> None:
    ok = to_json([result.not_run(tools.TOOLS["opensnoop"], result.NOT_COMPARABLE, "x",
                                 "vm:bookworm", "6.1.0", Accel.TCG, "0.26.0")])
    seen = {}

    def expected(kernel):
        return ()

    def fake(kernels, argv, **kw):
        seen["argv"], seen["timeout"], seen["splats"] = argv, kw["timeout"], \
            kw["expected_splats"]
        return [_guest_run("bookworm", ok, None),
                _guest_run("trixie", None, "timed out after 900 s")]

    monkeypatch.setattr(compare, "run_on_kernels", fake)
    opensnoop = [tools.TOOLS["opensnoop"]]
    recs = compare.compare_in_vms(opensnoop, catalog.resolve(["bookworm", "trixie"]),
                                  ["bcc-compare"], 1.0, 5, None, expected, log=None)
    assert seen["argv"] == ["bcc-compare", "--tools", "opensnoop"]
    assert seen["splats"] is expected
    assert [(r.where, r.status) for r in recs] == [("vm:bookworm", "not_comparable"),
                                                   ("vm:trixie", "failed")]
    assert recs[0].vm.outcome == "passed" and recs[0].vm.accel is Accel.TCG
    assert "timed out after 900 s" in recs[1].verdict and recs[1].vm.results_dir == "/r/trixie"
    # The VM's time limit covers the tool's two starts (shipped, noprealloc) and
    # the 3 windows of every round, and grows with the rounds asked for.
    short = seen["timeout"]
    assert short >= 2 * compare.VM_START + 5 * 3 * 1.0
    compare.compare_in_vms(opensnoop, catalog.resolve(["bookworm"]), ["bcc-compare"], 10.0, 50,
                           None, expected, log=None)
    assert seen["timeout"] - short >= 3 * (50 * 10.0 - 5 * 1.0)


def test_usage_errors_name_the_parameter(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bcc-compare", "--tools", "runqlat,nope"])
    assert e.value.code == 2
    assert "--tools: invalid choice: 'nope'" in capsys.readouterr().err
    for argv, param in ((["--runs", "1"], "--runs"), (["--duration", "0"], "--duration")):
        with pytest.raises(SystemExit) as e:
            main(["bcc-compare", *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"pybpfmap bcc-compare: error: argument {param}:"), err


def test_tools_list_forms() -> None:
    p = build_parser()
    forms = (["--tools", "runqlat,syscount"], ["--tools", "runqlat", "syscount"],
             ["--tools", "runqlat", "--tools", "syscount"])
    assert {tuple(p.parse_args(["bcc-compare", *f]).tools) for f in forms} == {
        ("runqlat", "syscount")}
