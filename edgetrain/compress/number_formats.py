"""Number formats applied to the PyTorch model (not to an exported file), by recipe name.

An entry is called as ``fn(model, *, example_input=None, **options) -> report``; its
metadata holds ``check(options)`` (validates option values without a model),
``check_model(model, options)`` and ``exportable`` (whether ONNX can express the result).
"""

from __future__ import annotations

from typing import Any

from edgetrain.registry import Registry

__all__ = ["NUMBER_FORMATS"]

NUMBER_FORMATS: Registry[Any] = Registry("number format")
