"""conv ops: validating wrappers around nbconv.kernels.conv."""
__all__ = []
