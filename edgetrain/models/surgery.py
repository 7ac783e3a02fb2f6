"""Architecture edits that pruning and growing make, and their replay from a state dict.

A pruned network is the original architecture with fewer channels in some layers and,
possibly, residual blocks reduced to their shortcut. Both are recorded by the weights
themselves (a layer's width is its weight's shape) plus the list of bypassed blocks,
so a checkpoint holding ``{"bypassed": [...]}`` and a state dict rebuilds the pruned
model from the zoo entry alone: :func:`restore_architecture`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from edgetrain.errors import CheckpointError

__all__ = [
    "ChannelBias",
    "ResidualBypass",
    "restore_architecture",
    "set_module",
]


class ChannelBias(nn.Module):
    """Adds a learnable per-channel constant: ``x + bias`` broadcast over positions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.view(1, -1, *([1] * (x.dim() - 2)))

    def extra_repr(self) -> str:
        return f"{self.bias.numel()}"


class ResidualBypass(nn.Module):
    """What remains of a residual block whose inner channels were all removed.

    The residual branch of such a block no longer depends on its input: it is the
    per-channel constant its last batch-norm produces from zeros. The block therefore
    becomes ``relu(shortcut(x) + offset)``, which is exactly the old function in eval
    mode; the offset keeps training as a bias.
    """

    def __init__(self, shortcut: nn.Module | None, channels: int, activation: bool = True) -> None:
        super().__init__()
        if shortcut is not None:
            self.shortcut = shortcut
        self.offset = ChannelBias(channels)
        self.relu = nn.ReLU(inplace=False) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.shortcut(x) if hasattr(self, "shortcut") else x
        return self.relu(self.offset(identity))


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _resized(module: nn.Module, prefix: str, state: Mapping[str, torch.Tensor]) -> nn.Module | None:
    """A fresh module like ``module`` with the shapes the state dict records, or None."""
    weight = state.get(f"{prefix}weight")
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and weight is not None:
        out_c, in_per_group = weight.shape[:2]
        groups = module.groups
        if groups > 1 and groups == module.in_channels:
            # depthwise (one input channel per group): the groups shrink with the channels
            groups = out_c // (module.out_channels // module.in_channels)
        if (out_c, in_per_group * groups) == (module.out_channels, module.in_channels):
            return None
        return type(module)(
            in_per_group * groups,
            out_c,
            module.kernel_size,  # type: ignore[arg-type]
            stride=module.stride,  # type: ignore[arg-type]
            padding=module.padding,  # type: ignore[arg-type]
            dilation=module.dilation,  # type: ignore[arg-type]
            groups=groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
        )
    if isinstance(module, nn.Linear) and weight is not None:
        if tuple(weight.shape) == (module.out_features, module.in_features):
            return None
        return nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        ref = state.get(f"{prefix}running_mean", weight)
        if ref is None or ref.shape[0] == module.num_features:
            return None
        return type(module)(
            ref.shape[0],
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
    if isinstance(module, nn.LayerNorm) and weight is not None and module.normalized_shape:
        if weight.shape == module.weight.shape:
            return None
        return nn.LayerNorm(
            tuple(weight.shape),
            eps=module.eps,
            elementwise_affine=True,
            bias=module.bias is not None,
        )
    if isinstance(module, nn.MultiheadAttention):
        return _resized_attention(module, prefix, state)
    if isinstance(module, ChannelBias):
        bias = state.get(f"{prefix}bias")
        if bias is None or bias.shape == module.bias.shape:
            return None
        return ChannelBias(bias.shape[0])
    return None


def _resized_attention(
    module: nn.MultiheadAttention, prefix: str, state: Mapping[str, torch.Tensor]
) -> nn.Module | None:
    """An attention with the embedding the state dict records; pruning removes whole
    heads, so every head keeps the width it had and the head count follows."""
    weight = state.get(f"{prefix}in_proj_weight")
    if weight is None or weight.shape[1] == module.embed_dim:
        return None
    embed = int(weight.shape[1])
    if embed % module.head_dim:
        raise CheckpointError(
            f"checkpoint gives the attention '{prefix.rstrip('.')}' an embedding of {embed}, "
            f"not a whole number of its {module.head_dim}-wide heads; load it into the model "
            "it was saved from"
        )
    return nn.MultiheadAttention(
        embed,
        embed // module.head_dim,
        dropout=module.dropout,
        bias=module.in_proj_bias is not None,
        add_bias_kv=module.bias_k is not None,
        add_zero_attn=module.add_zero_attn,
        batch_first=module.batch_first,
    )


def restore_architecture(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    bypassed: Iterable[str] = (),
) -> nn.Module:
    """Reshape ``model`` (built as originally specified) into the pruned architecture that
    ``state`` was saved from, in place; load the weights afterwards.

    Args:
        model: the freshly built original model.
        state: the pruned model's ``state_dict``.
        bypassed: names of residual blocks that were reduced to :class:`ResidualBypass`.

    Returns:
        The same model object.
    """
    for name in bypassed:
        try:
            block = model.get_submodule(name)
        except AttributeError as exc:
            raise CheckpointError(
                f"checkpoint bypasses block '{name}', which this model does not have; "
                "load it into the model it was trained with"
            ) from exc
        if not isinstance(block, ResidualBypass):
            bias = state.get(f"{name}.offset.bias")
            if bias is None:
                raise CheckpointError(
                    f"checkpoint bypasses block '{name}' but holds no '{name}.offset.bias'; "
                    "the checkpoint is incomplete, use another one"
                )
            shortcut = getattr(block, "shortcut", None)
            set_module(model, name, ResidualBypass(shortcut, bias.shape[0]))
    replaced: list[str] = []
    for name, module in list(model.named_modules()):
        if any(name.startswith(f"{r}.") for r in replaced):
            continue  # inside a module rebuilt whole (an attention's out_proj)
        replacement = _resized(module, f"{name}." if name else "", state)
        if replacement is not None:
            set_module(model, name, replacement)
            replaced.append(name)
    _reshape_bare_tensors(model, state)
    return model


def _reshape_bare_tensors(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Parameters and buffers used outside a layer (a ViT's class token and position
    embedding) take the shape the state dict records; their values load afterwards."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        saved = state.get(name)
        if saved is None or saved.shape == tensor.shape:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        fresh = torch.zeros(saved.shape, dtype=tensor.dtype, device=tensor.device)
        if isinstance(tensor, nn.Parameter):
            setattr(owner, attr, nn.Parameter(fresh, requires_grad=tensor.requires_grad))
        else:
            owner.register_buffer(
                attr, fresh, persistent=attr not in owner._non_persistent_buffers_set
            )
