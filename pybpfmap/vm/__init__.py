"""The pybpfmap test VM: a Debian image built from packages, booted under qemu.

Two entry points:

* :func:`pybpfmap.vm.run.run_in_vm` runs any command as root in a fresh guest
  of a catalog kernel (:mod:`.catalog`) and says how the run ended
  (:class:`pybpfmap.vm.outcome.VmResult`, :class:`~pybpfmap.vm.outcome.Outcome`):
  ``vm run``, ``vm test`` and the test suite use it;
* :func:`pybpfmap.vm.relay.run_command` runs ``python3 -m pybpfmap ARGV``
  there and brings back the command's own JSON: every ``--kernel`` goes
  through it.

CMD runs in the project tree (shared read-only over 9p at the same path as on
the host, importable via PYTHONPATH).  Its standard output comes back on its
own virtio-serial port (``stdout.txt``); anything it writes into
``$PYBPFMAP_RESULTS`` lands in ``results_dir`` on the host, and so do the
guest's ``dmesg.txt``, ``console.log`` and, when CMD is pytest,
``junit.xml``.  Modules: :mod:`.catalog` (the kernels), :mod:`.image` (the cache:
lookup), :mod:`.build` (building images), :mod:`.qemu` (process, QMP),
:mod:`.watchdog` (hang evidence), :mod:`.runner` (one boot and its outcome),
:mod:`.run` (a run: image, accelerator, results folder), :mod:`.relay` (a
pybpfmap command in the guest), :mod:`.suite` (the guest tests), :mod:`.accel`,
:mod:`.box`, :mod:`.vagrant_check`.  What runs inside the guest is
:mod:`pybpfmap.guest`; dmesg splats are :mod:`pybpfmap.splats`.  Importing
this package imports nothing.
"""
