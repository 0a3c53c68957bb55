"""basic ops: validating wrappers around nbconv.kernels.basic."""
__all__ = []
