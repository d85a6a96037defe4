"""``pybpfmap stress``: may a BPF program update hash maps from lock paths?

:mod:`.kinds` (the map kinds, one row each), :mod:`.probes` (kprobe,
tracepoint, raw_tp: loading and attaching), :mod:`.scenarios` (what each
scenario runs and predicts), :mod:`.allocator` and :mod:`.reentry` (the two
scenarios' BPF side and rows), :mod:`.workloads`, :mod:`.watch` (heartbeat,
kernel log), :mod:`.inject` (the negative controls), :mod:`.verdict` (outcome
and prediction, pure), :mod:`.records` (rows and their rendering), :mod:`.run`
(rows here), :mod:`.host` (rows in the test VM, one boot each).
"""
