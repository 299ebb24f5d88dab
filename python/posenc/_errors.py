"""posenc's exceptions: one class per C++ posenc::ErrorKind, each also a standard Python exception."""

from __future__ import annotations


class Error(Exception):
    """Raised by every posenc operation. ``kind`` is the C++ posenc::ErrorKind name; the message
    names the offending value, its index where there is one, and the limit it broke."""

    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(Error, ValueError):
    kind = "invalid_argument"


class OutOfRangeError(Error, IndexError):
    kind = "out_of_range"


class SizeOverflowError(Error, OverflowError):
    kind = "overflow"


class ConfigError(Error, ValueError):
    kind = "config"


class UnsupportedError(Error, RuntimeError):
    kind = "unsupported"


class VendorError(Error, RuntimeError):
    kind = "vendor"


class FileError(Error, OSError):
    kind = "io"


class OutOfMemoryError(Error, MemoryError):
    kind = "out_of_memory"


_BY_KIND = {c.kind: c for c in (InvalidArgumentError, OutOfRangeError, SizeOverflowError, ConfigError,
                               UnsupportedError, VendorError, FileError, OutOfMemoryError)}


def from_kind(kind: str, message: str) -> Error:
    """The exception for a C++ posenc::Error of ``kind`` (used by the extension's translator)."""
    return _BY_KIND.get(kind, Error)(message)
