"""io_uring engine: liburing bound with cffi.  Knows nothing of FUSE or virtqueues."""

from .engine import UringEngine, UringUnavailable

__all__ = ["UringEngine", "UringUnavailable"]
