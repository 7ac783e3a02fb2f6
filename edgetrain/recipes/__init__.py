"""Built-in recipes shipped with the package: run recipes here, compression recipes in
``compress/``.

``recipes/`` at the repository root points here, so ``edgetrain train
recipes/digits-pretrain.yaml`` and ``edgetrain train digits-pretrain`` name the same file.
"""

from __future__ import annotations

from edgetrain.configs import ShippedFiles

__all__ = ["COMPRESSION_RECIPES", "RECIPES"]

RECIPES = ShippedFiles("edgetrain.recipes")
"""The shipped run recipes (``RECIPES.names()``, ``RECIPES.path("digits-pretrain")``)."""

COMPRESSION_RECIPES = ShippedFiles("edgetrain.recipes", "compress")
"""The shipped compression recipes (``resnet20-l1``, ...)."""
