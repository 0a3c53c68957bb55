"""Jitted loop nests only: arrays and scalars in, arrays out.

No validation happens here: the wrappers in :mod:`nbconv.functional` check shapes, dtypes and
hyper-parameters, make arrays C-contiguous and allocate outputs before calling a kernel, so each
kernel compiles one specialisation per dtype (float32, float64).
"""
