"""``pybpfmap report``: every measurement for this kernel (and test-VM kernels) in one folder.

:mod:`.plan` says which commands run where, :mod:`.run` runs them (each as its
own ``python3 -m pybpfmap`` process, so a section that fails or hangs cannot
take the others down), :mod:`.render` writes ``report.md``.
"""
