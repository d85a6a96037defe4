"""``pybpfmap report``: every measurement for this kernel (and test-VM kernels) in one folder.

:mod:`.plan` says which commands run where and their budgets, :mod:`.run`
runs them (each as its own ``python3 -m pybpfmap`` process with a time limit,
so a section that fails or hangs cannot take the others down), :mod:`.render`
composes ``report.md`` from each command's own rendering.
"""
