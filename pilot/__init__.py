"""A pilot agent for grid and HPC workload systems."""

__version__ = "0.1.0"
