"""pybpfmap: the truth about BPF hash maps on the running kernel."""

__version__ = "0.1.0"
