"""A tiny Vision Transformer for 32x32 inputs.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale" (ICLR 2021), at the DeiT-Ti width (Touvron et al., 2021: 192 channels, 3 heads,
MLP 4x): 4x4 patches give 64 tokens plus a class token, pre-norm encoder blocks
(``nn.TransformerEncoderLayer``, GELU), and a linear head on the class token after a
final LayerNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from edgetrain.models.layers import ZooModel
from edgetrain.models.registry import MODELS

__all__ = ["VisionTransformer"]


class VisionTransformer(ZooModel):
    """Patch embedding (a strided conv), class token, learned positions, encoder, head."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int = 32,
        patch: int = 4,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if input_size % patch:
            raise ValueError(f"input_size {input_size} is not a multiple of patch {patch}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.input_shape = (in_channels, input_size, input_size)
        tokens = (input_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            int(dim * mlp_ratio),
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, tokens, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.encoder(x))[:, 0])


@MODELS.register("vit_tiny", input="image")
def vit_tiny(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int = 32,
    patch: int = 4,
    depth: int = 12,
) -> VisionTransformer:
    """ViT at DeiT-Ti width (192, 3 heads) on 4x4 patches, for 32x32 images."""
    return VisionTransformer(in_channels, num_classes, input_size, patch, depth=depth)
