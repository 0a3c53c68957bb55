"""pool ops: validating wrappers around nbconv.kernels.pool."""
__all__ = []
