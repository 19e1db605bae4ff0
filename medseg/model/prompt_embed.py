"""The dense prompt embedding: prompt maps at input resolution -> patch-embedding tokens.

A promptable SAM2-UNet takes a second input, ``prompt`` (N, 2, H, W): channel 0 is
positive evidence (a box's interior, discs at positive clicks, or the previous slice's
mask while propagating through a volume), channel 1 negative clicks. Two stride-2
convolutions bring it to the stride-4 token grid of the Hiera patch embedding, where it is
added, as SAM adds its dense (mask) prompt embedding to the image embedding. The last
convolution starts at zero, so a fresh promptable network computes exactly what the
prompt-free one with the same weights computes, and an all-zero prompt is always
"no prompt": automatic segmentation (the zero map gives a constant bias that training
learns to read as such).
"""

from __future__ import annotations

import torch
from torch import nn


class PromptEmbed(nn.Module):
    """(N, P, H, W) prompt maps -> (N, H/4, W/4, dim) tokens, channels-last like Hiera."""

    def __init__(self, channels: int, dim: int, hidden: int = 16) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=2, stride=2),
            nn.GELU(),
            nn.Conv2d(hidden, dim, kernel_size=2, stride=2),
            nn.GELU(),
            nn.Conv2d(dim, dim, kernel_size=1),
        )
        last = self.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        return self.layers(prompt).permute(0, 2, 3, 1)
