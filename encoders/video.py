"""Video encoders (gait, face, medical cine loops): RGB clip ``[N, T, 3, H, W]`` uint8 + frame mask ``[N, T]`` ->
tokens ``[N, k, d]``. One class per variant serves every video modality, registered under each name."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import Encoder, MaskedTokenPool, as_tuple, conv_stack, map_to_tokens, register

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
KINETICS_MEAN, KINETICS_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)


def prepare_clip(
    data: Tensor, mask: Tensor | None, mean: Sequence[float], std: Sequence[float]
) -> tuple[Tensor, Tensor]:
    """``[N, T, 3, H, W]`` (uint8, or float already in [0, 1]) -> normalised ``[N, 3, T, H, W]`` float
    with masked frames set to 0 (after normalisation), and the frame mask ``[N, T]`` (all True if None)."""
    x = data.float() / 255.0 if data.dtype == torch.uint8 else data.float()
    x = (x - x.new_tensor(mean).view(3, 1, 1)) / x.new_tensor(std).view(3, 1, 1)
    if mask is None:
        mask = torch.ones(data.shape[:2], dtype=torch.bool, device=data.device)
    x = torch.where(mask[:, :, None, None, None], x, 0.0)
    return x.transpose(1, 2), mask


class _VideoEncoder(Encoder):
    """Shared layout: ``[N, T <= frames, 3, *size]`` with a frame mask ``[N, T]``."""

    mask_axes = (0, 1)
    in_dtype = torch.uint8

    def _layout(self, frames: int, size: Sequence[int]) -> None:
        self.in_shape, self.variable_axes = (int(frames), 3, *as_tuple(size, 2)), (0,)


@register("face/conv3d")
@register("gait/conv3d")
class VideoConvEncoder(_VideoEncoder):
    """Small 3-D CNN over (T, H, W) with the frame mask as a 4th input channel, then attention pooling
    over the valid part of the final (T', H', W') grid: ``[N, T, 3, H, W]`` -> ``[N, k, d]``.

    Default strides: (1,2,2), (2,2,2), (2,2,2), (1,2,2): 16 x 64 x 64 -> 4 x 4 x 4.
    """

    def __init__(
        self,
        frames: int = 16,
        size: Sequence[int] = (64, 64),
        channels: Sequence[int] = (16, 32, 64, 96),
        strides: Sequence[Sequence[int]] = ((1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
        d_model: int = 128,
        num_tokens: int = 4,
    ) -> None:
        super().__init__(d_model=d_model, num_tokens=num_tokens)
        self._layout(frames, size)
        channels = as_tuple(channels)
        self.net = conv_stack(3, 4, channels, as_tuple(strides), kernel_size=3)
        self.pool = MaskedTokenPool(channels[-1], num_tokens, d_model)

    def encode(self, data: Tensor, mask: Tensor | None, value: Tensor | None) -> Tensor:
        x, mask = prepare_clip(data, mask, IMAGENET_MEAN, IMAGENET_STD)
        m = mask[:, None, :, None, None].expand(-1, 1, -1, *x.shape[-2:]).to(x.dtype)
        tokens, token_mask = map_to_tokens(self.net(torch.cat([x, m], dim=1)), mask, axis=0)
        return self.pool(tokens, token_mask)


@register("face/r3d18")
@register("gait/r3d18")
class VideoR3D18Encoder(_VideoEncoder):
    """torchvision ``r3d_18`` trunk (stem + ``stages`` of its 4 stages, random init, no download;
    classifier dropped) + attention pooling over the valid part of its final grid:
    ``[N, T, 3, H, W]`` -> ``[N, k, d]``.

    Input is normalised with Kinetics statistics; masked frames are zero after normalisation. The full
    trunk downsamples time by 8 and space by 16 (each stage after the first halves both); its
    BatchNorm layers use batch statistics in training mode.
    """

    def __init__(
        self, frames: int = 16, size: Sequence[int] = (64, 64), stages: int = 4, d_model: int = 128, num_tokens: int = 4
    ) -> None:
        from torchvision.models.video import r3d_18  # imported here: torchvision is slow to import

        super().__init__(d_model=d_model, num_tokens=num_tokens)
        self._layout(frames, size)
        if not 1 <= stages <= 4:
            raise ValueError(f"video r3d18 stages must be 1..4, got {stages}")
        self.trunk = r3d_18(weights=None)  # keeps torchvision's state-dict names for the stages kept
        self.trunk.fc = nn.Identity()
        for i in range(stages + 1, 5):
            delattr(self.trunk, f"layer{i}")
        self.num_stages = stages
        self.pool = MaskedTokenPool(64 * 2 ** (stages - 1), num_tokens, d_model)

    def encode(self, data: Tensor, mask: Tensor | None, value: Tensor | None) -> Tensor:
        x, mask = prepare_clip(data, mask, KINETICS_MEAN, KINETICS_STD)
        t = self.trunk
        x = t.stem(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(t, f"layer{i}")(x)
        tokens, token_mask = map_to_tokens(x, mask, axis=0)
        return self.pool(tokens, token_mask)
