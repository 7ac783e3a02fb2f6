"""edgetrain: train, fine-tune and compress neural networks for small devices.

The package is layered: ``cost``, ``data`` and ``models`` are the ground floor,
``engine`` trains, technique packages plug into the engine through callbacks, and
``report`` and ``cli`` read what runs wrote.
"""

from __future__ import annotations

from edgetrain.errors import EdgetrainError

__version__ = "0.1.0"

__all__ = ["EdgetrainError", "__version__"]
