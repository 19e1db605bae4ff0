"""SAM2-UNet configurations: the four published Hiera sizes by name, or any dict of the fields.

The config travels inside every medseg checkpoint and model card, so a model can always be
rebuilt from its file alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from medseg.errors import ConfigError

GROUPS = 8  # GroupNorm groups of a "group" decoder


@dataclass(frozen=True)
class Sam2UnetConfig:
    """Shape of one SAM2-UNet: the Hiera trunk (SAM2 "hieradet") plus the U-Net decoder.

    The first six fields are SAM2's own Hiera hyper-parameters. ``decoder_channels`` (RFB and
    Up block width) and ``adapter_dim`` are 64 and 32 in the published model; smaller values
    give cheaper models of the same architecture. ``prompt_channels`` 0 is the published,
    automatic-only network; 2 adds a dense prompt input (positive and negative evidence maps,
    ``medseg.model.prompt_embed``) whose embedding is added to the patch embedding, as SAM
    adds its dense prompt to the image embedding. An all-zero prompt is automatic mode.
    ``decoder_norm`` is the decoder's normalisation: "batch" (the published BatchNorm) or
    "group" (GroupNorm, 8 groups): training on small mixed batches (CT and MR, crops and
    whole views, four at a time) leaves BatchNorm's running statistics far from any one
    input, which made validation swing from epoch to epoch.
    """

    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_spec: tuple[int, ...]
    window_pos_embed_bkg_spatial_size: tuple[int, int]
    decoder_channels: int = 64
    adapter_dim: int = 32
    prompt_channels: int = 0
    decoder_norm: str = "batch"

    def __post_init__(self) -> None:
        if len(self.stages) != 4 or min(self.stages) < 1:
            raise ConfigError("SAM2-UNet config: stages must be four positive block counts")
        if len(self.window_spec) != 4 or min(self.window_spec) < 1:
            raise ConfigError("SAM2-UNet config: window_spec must be four positive sizes")
        if len(self.window_pos_embed_bkg_spatial_size) != 2:
            raise ConfigError("SAM2-UNet config: window_pos_embed_bkg_spatial_size is (h, w)")
        depth = sum(self.stages)
        if any(not 0 <= b < depth for b in self.global_att_blocks):
            raise ConfigError(f"SAM2-UNet config: global_att_blocks must lie in [0, {depth})")
        for name in ("embed_dim", "num_heads", "decoder_channels", "adapter_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SAM2-UNet config: {name} must be positive")
        if self.prompt_channels not in (0, 2):
            raise ConfigError("SAM2-UNet config: prompt_channels must be 0 (none) or 2")
        if self.decoder_norm not in ("batch", "group"):
            raise ConfigError("SAM2-UNet config: decoder_norm must be 'batch' or 'group'")
        if self.decoder_norm == "group" and self.decoder_channels % GROUPS:
            raise ConfigError(
                f"SAM2-UNet config: group norm needs decoder_channels % {GROUPS} == 0"
            )
        if self.embed_dim % self.num_heads:
            raise ConfigError("SAM2-UNet config: embed_dim must be divisible by num_heads")

    @property
    def depth(self) -> int:
        return sum(self.stages)

    @property
    def stage_dims(self) -> tuple[int, int, int, int]:
        """Channel width of each stage output (the RFB input channels)."""
        return tuple(self.embed_dim * 2**i for i in range(4))  # type: ignore[return-value]

    @property
    def promptable(self) -> bool:
        return self.prompt_channels > 0

    def to_dict(self) -> dict[str, Any]:
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if not self.prompt_channels:  # the published configs' dicts stay as they were
            del data["prompt_channels"]
        if self.decoder_norm == "batch":
            del data["decoder_norm"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sam2UnetConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"SAM2-UNet config: unknown field(s) {sorted(unknown)}")
        values = dict(data)
        try:
            for key in ("stages", "global_att_blocks", "window_spec"):
                values[key] = tuple(int(v) for v in values[key])
            values["window_pos_embed_bkg_spatial_size"] = tuple(
                int(v) for v in values["window_pos_embed_bkg_spatial_size"]
            )
            return cls(**values)
        except KeyError as exc:
            raise ConfigError(f"SAM2-UNet config: missing field {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"SAM2-UNet config: {exc}") from exc


# SAM2's published Hiera configurations (sam2_hiera_{t,s,b+,l}.yaml).
NAMED_CONFIGS: dict[str, Sam2UnetConfig] = {
    "hiera_l": Sam2UnetConfig(144, 2, (2, 6, 36, 4), (23, 33, 43), (8, 4, 16, 8), (7, 7)),
    "hiera_b+": Sam2UnetConfig(112, 2, (2, 3, 16, 3), (12, 16, 20), (8, 4, 14, 7), (14, 14)),
    "hiera_s": Sam2UnetConfig(96, 1, (1, 2, 11, 2), (7, 10, 13), (8, 4, 14, 7), (7, 7)),
    "hiera_t": Sam2UnetConfig(96, 1, (1, 2, 7, 2), (5, 7, 9), (8, 4, 14, 7), (7, 7)),
    # The fidelity fixture's configuration (../shared/fixtures/sam2unet/micro_config.json).
    "micro": Sam2UnetConfig(16, 1, (1, 2, 2, 1), (4,), (8, 4, 16, 8), (7, 7)),
    # The bundled phantom model: micro's trunk with a half-width decoder (CPU-trainable).
    "phantom": Sam2UnetConfig(16, 1, (1, 2, 2, 1), (4,), (8, 4, 16, 8), (7, 7), 32, 16),
    # The promptable phantom model: the same network plus the dense prompt input, with
    # GroupNorm in the decoder (small mixed batches).
    "phantom_prompt": Sam2UnetConfig(
        16, 1, (1, 2, 2, 1), (4,), (8, 4, 16, 8), (7, 7), 32, 16, 2, "group"
    ),
}


def resolve_config(config: str | Mapping[str, Any] | Sam2UnetConfig) -> Sam2UnetConfig:
    """A config from a name in ``NAMED_CONFIGS``, a dict of the fields, or a config itself."""
    if isinstance(config, Sam2UnetConfig):
        return config
    if isinstance(config, str):
        try:
            return NAMED_CONFIGS[config]
        except KeyError:
            names = ", ".join(NAMED_CONFIGS)
            raise ConfigError(f"unknown SAM2-UNet config {config!r} (known: {names})") from None
    if isinstance(config, Mapping):
        return Sam2UnetConfig.from_dict(config)
    raise ConfigError(f"SAM2-UNet config must be a name or a dict, not {type(config).__name__}")
