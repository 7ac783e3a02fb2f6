"""Registry of callbacks that configs can name (``callbacks: [{name: early-stopping}]``).

Technique packages register their callbacks here, so the engine never names them.
"""

from __future__ import annotations

from edgetrain.engine.callback import Callback
from edgetrain.registry import Registry

__all__ = ["CALLBACKS"]

CALLBACKS: Registry[Callback] = Registry("callback")
