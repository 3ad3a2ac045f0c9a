"""A restricted unpickler for the official CIFAR-10 batches: it builds dicts, lists, strings, numbers, bytes
and numpy arrays only, and refuses any other global, since unpickling one could run code."""

from __future__ import annotations

import codecs
import functools
import io
import pickle

import numpy as np

from ..errors import DataError


def _latin1(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Python 3's protocol-2 pickles store bytes as _codecs.encode(text, "latin1"); allow only that codec."""
    if encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


@functools.cache
def _safe_globals() -> dict[tuple[str, str], object]:
    """The globals that CIFAR-10 batches need: numpy's array and dtype reconstruction, under either module name."""
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 moved numpy.core to numpy._core
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """Builds only dicts, lists, strings, numbers, bytes and numpy arrays; any other global is refused."""

    where = ""

    def find_class(self, module: str, name: str) -> object:
        obj = _safe_globals().get((module, name))
        if obj is None:
            raise DataError(
                f"{self.where} refers to {module}.{name}, which a CIFAR-10 batch never holds; refusing to unpickle "
                "it (it could run code): replace the file with a copy from the official archive (--download)"
            )
        return obj


def _unpickle(blob: bytes, where: str) -> object:
    u = _BatchUnpickler(io.BytesIO(blob), encoding="bytes")  # the official batches are Python 2 pickles
    u.where = where
    try:
        return u.load()
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{where} is truncated or corrupt ({type(e).__name__}: {e}); "
                        "replace it with a copy from the official archive (--download)") from None
