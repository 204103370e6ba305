"""MRI encoders: a brain volume ``[N, 1, D, H, W]`` (float, z-scored) -> tokens ``[N, k, d]``.

MRI has no mask: a volume is either there or not.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .base import Encoder, MaskedTokenPool, as_tuple, conv_stack, map_to_tokens, register


@register("mri/conv3d")
class MRIConvEncoder(Encoder):
    """Small strided 3-D CNN (MONAI ``Convolution`` blocks) + attention pooling over the final grid.

    ``[N, 1, *size]`` -> ``[N, num_tokens, d_model]``. Each block halves every spatial axis.
    """

    def __init__(
        self,
        size: Sequence[int] = (48, 48, 48),
        channels: Sequence[int] = (16, 32, 64, 96),
        d_model: int = 128,
        num_tokens: int = 4,
    ) -> None:
        super().__init__(d_model=d_model, num_tokens=num_tokens)
        self.in_shape = (1, *as_tuple(size, 3))
        channels = as_tuple(channels)
        self.net = conv_stack(3, 1, channels, [2] * len(channels), kernel_size=3)
        self.pool = MaskedTokenPool(channels[-1], num_tokens, d_model)

    def encode(self, data: Tensor, mask: Tensor | None, value: Tensor | None) -> Tensor:
        tokens, _ = map_to_tokens(self.net(data))
        return self.pool(tokens)


@register("mri/resnet")
class MRIResNetEncoder(Encoder):
    """MONAI 3-D ResNet trunk (``resnet10/18/34``, no classifier) + attention pooling over its final
    feature grid: ``[N, 1, *size]`` -> ``[N, num_tokens, d_model]``.

    The trunk downsamples by 16 (stride-2 stem, max pool, three stride-2 stages); ``widen_factor``
    scales its widths. Its BatchNorm layers use batch statistics in training mode.
    """

    DEPTHS = (10, 18, 34)

    def __init__(
        self,
        size: Sequence[int] = (48, 48, 48),
        depth: int = 10,
        widen_factor: float = 1.0,
        d_model: int = 128,
        num_tokens: int = 4,
    ) -> None:
        from monai.networks import nets  # imported here: monai.networks.nets is slow to import

        super().__init__(d_model=d_model, num_tokens=num_tokens)
        if depth not in self.DEPTHS:
            raise ValueError(f"mri/resnet depth must be one of {list(self.DEPTHS)}, got {depth}")
        self.in_shape = (1, *as_tuple(size, 3))
        self.trunk = getattr(nets, f"resnet{depth}")(
            spatial_dims=3, n_input_channels=1, feed_forward=False, widen_factor=widen_factor
        )
        self.pool = MaskedTokenPool(self.trunk.in_planes, num_tokens, d_model)

    def encode(self, data: Tensor, mask: Tensor | None, value: Tensor | None) -> Tensor:
        t = self.trunk
        x = t.act(t.bn1(t.conv1(data)))
        if not t.no_max_pool:
            x = t.maxpool(x)
        x = t.layer4(t.layer3(t.layer2(t.layer1(x))))
        tokens, _ = map_to_tokens(x)
        return self.pool(tokens)
