"""Suites that need an NVIDIA GPU (and, for the kernel library, nvcc and CUTLASS's headers)."""
