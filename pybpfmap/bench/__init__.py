"""``pybpfmap bench``: what an update -> lookup -> delete triple costs on this
kernel, and the proof that each figure is what it says.

- :mod:`.program` loads ``bpf/bench_triple.c`` on a map pybpfmap made itself
  (:mod:`.subject`: in a memory cgroup of its own) and reads back what the
  program counted (its runs, failed map calls by errno) and what the kernel
  counted (bpf_prog_info);
- :mod:`.inkernel` times it with BPF_PROG_TEST_RUN, by test_run's clock, by
  bpf_stats and by CLOCK_MONOTONIC;
- :mod:`.syscall` triggers it from getuid() on a :mod:`.triggers` trigger
  (kprobe, tracepoint or raw tracepoint), one pinned trigger process per
  CPU, as samples/bpf/map_perf_test does;
- :mod:`.harness` is each :class:`~.record.Mode`'s measurement and record,
  :mod:`.verify` the check every record passes or is flagged by;
- :mod:`.peer` runs map_perf_test itself and :mod:`.compare` puts it beside
  the syscall mode (``--peer``);
- :mod:`.run` turns :mod:`.options` into :mod:`.record` records, made from
  :mod:`.machine` facts; :mod:`.table` and :mod:`.plot` show them.

``--kernel`` runs the same command in the test VM through
:mod:`pybpfmap.vm.relay`.
"""

from pybpfmap.bench.record import BenchRecord, Mode, load, pre_no_ratio
from pybpfmap.bench.table import render_markdown, render_text

__all__ = ["BenchRecord", "Mode", "load", "pre_no_ratio", "render_markdown", "render_text"]
