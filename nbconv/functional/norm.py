"""norm ops: validating wrappers around nbconv.kernels.norm."""
__all__ = []
