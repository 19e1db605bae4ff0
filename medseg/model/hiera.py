"""The Hiera image encoder in SAM2's "hieradet" form, with SAM2-UNet's adapters.

Module and parameter names follow SAM2 (``patch_embed.proj``, ``blocks.N.attn.qkv``,
``mlp.layers.0``...) and SAM2-UNet (each block wrapped as ``blocks.N.block`` beside its
adapter ``blocks.N.prompt_learn``), so published checkpoints load with ``strict=True``.
Tensors between blocks are channels-last: (B, H, W, C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medseg.model.config import Sam2UnetConfig

LAYER_NORM_EPS = 1e-6
Q_STRIDE = 2  # SAM2: q_stride (2, 2), pooling at the first block of stages 2, 3 and 4


def _pool(x: torch.Tensor, pool: nn.Module | None) -> torch.Tensor:
    """Max-pool a channels-last map (B, H, W, C) -> (B, H/2, W/2, C)."""
    if pool is None:
        return x
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def window_partition(x: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * windows, size, size, C), zero-padding bottom/right first.

    The padded tokens take part in attention (as in SAM2); dropping them changes the output.
    """
    b, h, w, c = x.shape
    pad_h = (size - h % size) % size
    pad_w = (size - w % size) % size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // size, size, wp // size, size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, size, size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, size: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of ``window_partition``: (B * windows, size, size, C) -> (B, H, W, C)."""
    hp, wp = padded_hw
    h, w = hw
    c = windows.shape[-1]
    x = windows.view(-1, hp // size, wp // size, size, size, c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)
    if hp > h or wp > w:
        x = x[:, :h, :w, :]
    return x


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution to tokens, channels-last."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # (B, H/4, W/4, C)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear, keyed ``layers.0`` / ``layers.1`` like SAM2's MLP."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, dim)])
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](self.act(self.layers[0](x)))


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention whose queries may be max-pooled (stage transitions)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1)
        q, k, v = torch.unbind(qkv, 2)  # each (B, HW, heads, head_dim)
        if self.q_pool is not None:
            q = _pool(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x.transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(x)


class MultiScaleBlock(nn.Module):
    """One Hiera block: (windowed) attention then MLP, both pre-norm with residuals."""

    def __init__(
        self, dim: int, dim_out: int, num_heads: int, *, q_pool: bool, window_size: int
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.pool = nn.MaxPool2d(kernel_size=Q_STRIDE, stride=Q_STRIDE) if q_pool else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim_out, 4 * dim_out)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x  # (B, H, W, C)
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = _pool(self.proj(x), self.pool)
        size = self.window_size
        if size > 0:
            hw = (x.shape[1], x.shape[2])
            x, padded_hw = window_partition(x, size)
        x = self.attn(x)
        if self.pool is not None:
            # queries were pooled: windows shrank by the stride; re-derive the padded grid
            size = self.window_size // Q_STRIDE
            hw = (shortcut.shape[1], shortcut.shape[2])
            if size > 0:
                padded_hw = (-(-hw[0] // size) * size, -(-hw[1] // size) * size)
        if self.window_size > 0:
            x = window_unpartition(x, size, padded_hw, hw)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Adapter(nn.Module):
    """SAM2-UNet's adapter: adds GELU(Linear(GELU(Linear(x)))) to a block's input."""

    def __init__(self, block: MultiScaleBlock, adapter_dim: int) -> None:
        super().__init__()
        self.block = block
        dim = block.dim
        self.prompt_learn = nn.Sequential(
            nn.Linear(dim, adapter_dim), nn.GELU(), nn.Linear(adapter_dim, dim), nn.GELU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x + self.prompt_learn(x))


class Hiera(nn.Module):
    """The hierarchical trunk; returns the four stage outputs, channels-first, finest first."""

    def __init__(self, config: Sam2UnetConfig) -> None:
        super().__init__()
        self.window_spec = config.window_spec
        self.stage_ends = [sum(config.stages[: i + 1]) - 1 for i in range(4)]
        q_pool_blocks = {end + 1 for end in self.stage_ends[:-1]}
        dim, heads = config.embed_dim, config.num_heads
        self.patch_embed = PatchEmbed(dim)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, dim, *config.window_pos_embed_bkg_spatial_size)
        )
        w0 = config.window_spec[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, dim, w0, w0))
        blocks = []
        stage = 0
        for i in range(config.depth):
            # a block's window is that of the stage it starts in (before the stage switch)
            window = 0 if i in config.global_att_blocks else config.window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out, heads = dim * 2, heads * 2
                stage += 1
            block = MultiScaleBlock(
                dim, dim_out, heads, q_pool=i in q_pool_blocks, window_size=window
            )
            blocks.append(Adapter(block, config.adapter_dim))
            dim = dim_out
        self.blocks = nn.Sequential(*blocks)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Background embedding resized bicubically plus the window embedding tiled: (1,H,W,C)."""
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic", align_corners=False)
        w0 = self.pos_embed_window.shape[-1]
        if h % w0 or w % w0:
            raise ValueError(f"token grid {h}x{w} is not a multiple of the window {w0}")
        pos = pos + self.pos_embed_window.tile(1, 1, h // w0, w // w0)
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``prompt``: optional (B, H/4, W/4, C) prompt tokens added to the patch embedding."""
        x = self.patch_embed(x)  # (B, H/4, W/4, C)
        x = x + self._pos_embed(x.shape[1], x.shape[2])
        if prompt is not None:
            x = x + prompt
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))  # (B, C, H, W)
        return outputs
