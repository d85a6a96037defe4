"""``pybpfmap bench``: what an update -> lookup -> delete triple costs on this kernel.

Two ways to run the triple, as in the kernel's own tools:

- :mod:`.inkernel` runs it with BPF_PROG_TEST_RUN (no trigger at all) and
  reports the kernel's own per-run duration minus that of an empty program;
- :mod:`.syscall` runs it from a program on a syscall, triggered by one
  pinned process per CPU, as samples/bpf/map_perf_test does, and reports
  events per second.

:mod:`.run` turns options into measurements and records, :mod:`.stats`
summarises repeated runs, :mod:`.table` and :mod:`.plot` show them,
:mod:`.guest` runs the whole bench inside the test VM (``--kernel``).
"""
