"""llama2py: run llama2.c checkpoints from Python on C++ (CPU) and CUDA kernels."""
__version__ = "0.1.0"
