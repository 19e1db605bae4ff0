"""SAM2-UNet's training loss: weighted BCE + weighted IoU (the "structure loss").

Pixels near the mask boundary weigh up to 6x: ``1 + 5 * |avgpool31(mask) - mask|``.
The reference implementation passes ``reduce='none'`` to the BCE, a deprecated argument
that PyTorch maps to a plain *mean*, so its BCE term is not actually weighted; here
``reduction='none'`` is used, which is what the paper describes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def boundary_weight(mask: torch.Tensor) -> torch.Tensor:
    """``1 + 5 * |avgpool31(mask) - mask|``: up to 6 near edges, 1 far from them.

    The 31x31 mean (zero padding counted, as ``avg_pool2d``'s default) is computed as a
    31x1 then 1x31 mean: the same numbers (to float rounding) at 1/15 of the CPU cost.
    """
    local = F.avg_pool2d(mask, kernel_size=(31, 1), stride=1, padding=(15, 0))
    local = F.avg_pool2d(local, kernel_size=(1, 31), stride=1, padding=(0, 15))
    return 1 + 5 * torch.abs(local - mask)


def structure_loss(
    logits: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over the batch of weighted BCE + weighted IoU; both (B, 1, H, W), mask in [0, 1].

    ``weight`` may be passed in when several outputs are scored against one mask (the
    31x31 pooling is the costliest part of the loss on a CPU).
    """
    if weight is None:
        weight = boundary_weight(mask)
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    wbce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * mask * weight).sum(dim=(2, 3))
    union = ((prob + mask) * weight).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()


def deep_supervision_loss(
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], mask: torch.Tensor
) -> torch.Tensor:
    """The structure loss summed over ``out``, ``out1`` and ``out2``, as in SAM2-UNet."""
    weight = boundary_weight(mask)
    return sum(
        (structure_loss(o, mask, weight) for o in outputs), torch.zeros((), device=mask.device)
    )
