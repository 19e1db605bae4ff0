"""SAM2-UNet: Hiera trunk with adapters, RFB blocks and a U-Net decoder.

Forward returns ``(out, out1, out2)`` like the original: ``out`` is the prediction used at
inference (logits at input resolution), ``out1``/``out2`` are the deep-supervision heads that
training also scores. State-dict keys match the published checkpoints exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medseg.model.config import GROUPS, Sam2UnetConfig, resolve_config
from medseg.model.hiera import Hiera
from medseg.model.prompt_embed import PromptEmbed


def _norm(kind: str, channels: int) -> nn.Module:
    """The decoder's normalisation (``Sam2UnetConfig.decoder_norm``); both keep the
    published ``weight``/``bias`` names, GroupNorm has no running statistics."""
    if kind == "group":
        return nn.GroupNorm(GROUPS, channels)
    return nn.BatchNorm2d(channels)


class BasicConv2d(nn.Module):
    """Convolution + BatchNorm, no activation (the RFB's building block)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int],
        padding: int | tuple[int, int] = 0,
        dilation: int = 1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False)
        self.bn = _norm(norm, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class RFB(nn.Module):
    """Receptive-field block: four branches of growing (dilated) context plus a residual."""

    def __init__(self, cin: int, cout: int, norm: str = "batch") -> None:
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(cin, cout, 1, norm=norm))
        for index, k in ((1, 3), (2, 5), (3, 7)):
            branch = nn.Sequential(
                BasicConv2d(cin, cout, 1, norm=norm),
                BasicConv2d(cout, cout, (1, k), padding=(0, k // 2), norm=norm),
                BasicConv2d(cout, cout, (k, 1), padding=(k // 2, 0), norm=norm),
                BasicConv2d(cout, cout, 3, padding=k, dilation=k, norm=norm),
            )
            self.add_module(f"branch{index}", branch)
        self.conv_cat = BasicConv2d(4 * cout, cout, 3, padding=1, norm=norm)
        self.conv_res = BasicConv2d(cin, cout, 1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)]
        return F.relu(self.conv_cat(torch.cat(branches, dim=1)) + self.conv_res(x))


class DoubleConv(nn.Module):
    """(conv3x3 -> BN -> ReLU) twice, keyed ``double_conv.{0,1,3,4}``."""

    def __init__(self, cin: int, cout: int, mid: int, norm: str = "batch") -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, mid, 3, padding=1, bias=False),
            _norm(norm, mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 3, padding=1, bias=False),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    """x2 bilinear upsampling (align_corners=True), pad to the skip, concat [skip, up], conv."""

    def __init__(self, cin: int, cout: int, norm: str = "batch") -> None:
        super().__init__()
        self.conv = DoubleConv(cin, cout, cin // 2, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        dy = skip.shape[2] - x.shape[2]
        dx = skip.shape[3] - x.shape[3]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class SAM2UNet(nn.Module):
    """The full network; (B, 3, H, W) normalised image -> three (B, 1, H, W) logit maps.

    A promptable config (``prompt_channels`` 2) also takes ``prompt`` (B, 2, H, W); left
    out, it is all zero (automatic mode). The prompt-free network has no prompt module, so
    its state_dict keys are exactly the published checkpoints'.
    """

    def __init__(self, config: Sam2UnetConfig) -> None:
        super().__init__()
        self.config = config
        c = config.decoder_channels
        self.encoder = Hiera(config)
        for index, dim in enumerate(config.stage_dims, start=1):
            self.add_module(f"rfb{index}", RFB(dim, c, config.decoder_norm))
        # up4 exists in the published checkpoints but the forward pass never uses it
        for index in range(1, 5):
            self.add_module(f"up{index}", Up(2 * c, c, config.decoder_norm))
        self.side1 = nn.Conv2d(c, 1, kernel_size=1)
        self.side2 = nn.Conv2d(c, 1, kernel_size=1)
        self.head = nn.Conv2d(c, 1, kernel_size=1)
        if config.promptable:
            self.prompt_embed = PromptEmbed(config.prompt_channels, config.embed_dim)

    def forward(
        self, x: torch.Tensor, prompt: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens = None
        if self.config.promptable:
            if prompt is None:
                b, _, h, w = x.shape
                prompt = x.new_zeros((b, self.config.prompt_channels, h, w))
            tokens = self.prompt_embed(prompt)
        elif prompt is not None:
            raise ValueError("this SAM2-UNet has no prompt input (prompt_channels 0)")
        x1, x2, x3, x4 = self.encoder(x, tokens)  # strides 4, 8, 16, 32
        x1, x2, x3, x4 = self.rfb1(x1), self.rfb2(x2), self.rfb3(x3), self.rfb4(x4)
        x = self.up1(x4, x3)
        out1 = _upsample(self.side1(x), 16)
        x = self.up2(x, x2)
        out2 = _upsample(self.side2(x), 8)
        x = self.up3(x, x1)
        out = _upsample(self.head(x), 4)
        return out, out1, out2

    def freeze_encoder(self) -> None:
        """SAM2-UNet's recipe: train adapters + RFB + decoder, keep the Hiera weights fixed."""
        for name, param in self.encoder.named_parameters():
            param.requires_grad = ".prompt_learn." in name


def _upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=float(factor), mode="bilinear", align_corners=False)


def build_sam2unet(config: str | Mapping[str, Any] | Sam2UnetConfig) -> SAM2UNet:
    """A SAM2-UNet for a named config (``hiera_l``, ``hiera_b+``, ``hiera_s``, ``hiera_t``,
    ``micro``, ``phantom``, ``phantom_prompt``) or a dict of ``Sam2UnetConfig`` fields;
    weights are random."""
    return SAM2UNet(resolve_config(config))


class LogitsOnly(nn.Module):
    """Wraps a SAM2UNet so it returns only ``out``: the graph that gets exported."""

    def __init__(self, model: SAM2UNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)[0]


class PromptedLogitsOnly(nn.Module):
    """The exported graph of a promptable SAM2UNet: (image, prompt) -> ``out``."""

    def __init__(self, model: SAM2UNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        return self.model(image, prompt)[0]
