"""The errors of :mod:`nbconv.serialization`: all ``ValueError`` subclasses whose message names
the file and, where there is one, the tensor."""
import pickle

__all__ = ["FileFormatError", "SafetensorsError", "TorchFileError", "UnsafeFileError"]


class FileFormatError(ValueError):
    """A file :func:`nbconv.load` cannot read: malformed, truncated or of an unknown format."""


class SafetensorsError(FileFormatError):
    """A malformed or unsupported safetensors file."""


class TorchFileError(FileFormatError):
    """A malformed or unsupported torch ``.pt`` file (truncated, damaged, an impossible tensor
    geometry, the legacy pre-1.6 format, a storage type NumPy cannot hold)."""


class UnsafeFileError(TorchFileError, pickle.UnpicklingError):
    """A ``.pt`` file whose pickle asks for something that could run code (a global other than
    the tensor rebuilders and storage types, an opcode that builds class instances): refused
    before anything it names is imported or called."""
