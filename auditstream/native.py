"""Load a stage's C functions (``*/csrc/*.c``, built by setup.py) when built and allowed.

Each C function does the work of a Python function that stays the reference, and the
differential tests (tests/test_native_*.py) hold the two equal. ``AUDITSTREAM_NATIVE``:
``0`` never uses C; ``1`` requires it (loading fails with the reason when a module is not
built: CI sets this); unset uses C where built.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

MODE_ENV = "AUDITSTREAM_NATIVE"


class NativeUnavailable(ImportError):
    """``AUDITSTREAM_NATIVE=1`` but a C module is not built (or fails to load)."""


def load_native(module_name: str, function_name: str) -> Any:
    """``module_name.function_name`` from a built C module; None when not built or not allowed."""
    mode = os.environ.get(MODE_ENV, "")
    if mode == "0":
        return None
    try:
        return getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as err:
        if mode == "1":
            raise NativeUnavailable(
                f"{MODE_ENV}=1 but {module_name}.{function_name} cannot be loaded ({err}); "
                "build it with `pip install -e .` (needs gcc and the Python headers)"
            ) from err
        return None
