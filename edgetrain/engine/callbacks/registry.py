"""Registries of callbacks that configs can name (``callbacks: [{name: early-stopping}]``,
``lr_control: actcool``).

Technique packages register their callbacks here, so the engine never names them.
"""

from __future__ import annotations

from edgetrain.engine.callback import Callback
from edgetrain.registry import Registry

__all__ = ["CALLBACKS", "LR_CONTROLLERS"]

CALLBACKS: Registry[Callback] = Registry("callback")

LR_CONTROLLERS: Registry[Callback] = Registry("LR controller")
"""Callbacks that set the learning rate every step in place of a scheduler
(``lr_control:`` in recipes); technique packages register them, the engine names none."""
