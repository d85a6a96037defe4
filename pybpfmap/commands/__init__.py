"""Commands of the ``pybpfmap`` CLI, one module each."""
