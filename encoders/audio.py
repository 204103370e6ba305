"""Audio encoders (voice, breath): mono waveform ``[N, 1, samples]`` (float, zero padded) + sample
mask ``[N, samples]`` -> tokens ``[N, k, d]``.

Both variants read the same torchaudio log-mel front end (:class:`LogMel`); one class serves both
modalities and is registered under both names.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchaudio.transforms import AmplitudeToDB, MelSpectrogram

from .base import Encoder, MaskedTokenPool, as_tuple, conv_stack, map_to_tokens, register


class LogMel(nn.Module):
    """Waveform ``[N, 1, S]`` + mask ``[N, S]`` -> log-mel ``[N, n_mels, T]`` + frame mask ``[N, T]``.

    Masked samples are zeroed before the STFT; frame ``t`` (centred on sample ``t * hop_length``) is
    valid if that sample is. Decibels are standardised per instance over its valid frames (removing
    recording gain) and invalid frames are set to 0. ``T = S // hop_length + 1``.
    """

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, top_db: float = 80.0) -> None:
        super().__init__()
        self.hop_length, self.n_mels = hop_length, n_mels
        self._mel_kwargs = dict(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)
        self.mel = self._fresh_mel().to(torch.get_default_device())
        self.to_db = AmplitudeToDB("power", top_db=top_db)

    def _fresh_mel(self) -> MelSpectrogram:
        with torch.device("cpu"):  # torchaudio checks its filterbank with .any(), which meta tensors refuse
            return MelSpectrogram(**self._mel_kwargs)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Recompute the STFT window and mel filterbank buffers (garbage after ``to_empty``)."""
        for buf, fresh in zip(self.mel.buffers(), self._fresh_mel().buffers(), strict=True):
            buf.copy_(fresh)

    def num_frames(self, samples: int) -> int:
        return samples // self.hop_length + 1

    def forward(self, wave: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        n, _, s = wave.shape
        if mask is None:
            mask = torch.ones(n, s, dtype=torch.bool, device=wave.device)
        db = self.to_db(self.mel(torch.where(mask[:, None], wave, 0.0)))[:, 0]  # [N, n_mels, T]
        idx = (torch.arange(db.shape[-1], device=wave.device) * self.hop_length).clamp(max=s - 1)
        frames = mask[:, idx]
        m = frames[:, None, :].expand_as(db)
        count = (frames.sum(-1) * self.n_mels).clamp(min=1)[:, None, None]
        mean = torch.where(m, db, 0.0).sum((1, 2), keepdim=True) / count
        var = torch.where(m, (db - mean) ** 2, 0.0).sum((1, 2), keepdim=True) / count
        return torch.where(m, (db - mean) * torch.rsqrt(var + 1e-5), 0.0), frames


@register("breath/conv")
@register("voice/conv")
class AudioConvEncoder(Encoder):
    """Log-mel + frame-mask channel -> small 2-D CNN over (mel, time) -> attention pooling over valid
    time steps: ``[N, 1, S <= max_samples]`` -> ``[N, num_tokens, d_model]``."""

    mask_axes = (0, 2)

    def __init__(
        self,
        sample_rate: int = 16000,
        max_samples: int = 64000,
        n_mels: int = 64,
        n_fft: int = 400,
        hop_length: int = 160,
        channels: Sequence[int] = (16, 32, 64, 128),
        d_model: int = 128,
        num_tokens: int = 4,
    ) -> None:
        super().__init__(d_model=d_model, num_tokens=num_tokens)
        self.in_shape, self.variable_axes = (1, int(max_samples)), (1,)
        channels = as_tuple(channels)
        self.features = LogMel(sample_rate, n_fft, hop_length, n_mels)
        self.net = conv_stack(2, 2, channels, [2] * len(channels), kernel_size=3)
        self.pool = MaskedTokenPool(channels[-1], num_tokens, d_model)

    def encode(self, data: Tensor, mask: Tensor | None, value: Tensor | None) -> Tensor:
        feats, frames = self.features(data, mask)  # [N, F, T], [N, T]
        x = torch.stack([feats, frames[:, None].expand_as(feats).to(feats.dtype)], dim=1)
        tokens, token_mask = map_to_tokens(self.net(x), frames, axis=1)
        return self.pool(tokens, token_mask)


@register("breath/ast")
@register("voice/ast")
class AudioASTEncoder(Encoder):
    """Audio spectrogram transformer (``transformers.ASTModel``, small config, random init) over the
    same log-mel features: ``[N, 1, S <= max_samples]`` -> ``[N, num_tokens, d_model]``.

    Features are padded to ``max_length = max_samples // hop_length + 1`` frames (AST's position
    table is fixed) and fed as ``input_values [N, max_length, n_mels]``. Patches whose frames are all
    invalid are left out of the final attention pooling and, where ``ASTModel`` takes an
    ``attention_mask`` (transformers >= 5), out of attention too (before, they are attended as zeros).
    """

    mask_axes = (0, 2)

    def __init__(
        self,
        sample_rate: int = 16000,
        max_samples: int = 64000,
        n_mels: int = 64,
        n_fft: int = 400,
        hop_length: int = 160,
        hidden_size: int = 192,
        num_layers: int = 4,
        num_heads: int = 4,
        intermediate_size: int = 768,
        patch_size: int = 16,
        frequency_stride: int = 16,
        time_stride: int = 16,
        d_model: int = 128,
        num_tokens: int = 4,
    ) -> None:
        from transformers import ASTConfig, ASTModel  # imported here: transformers takes seconds to import

        super().__init__(d_model=d_model, num_tokens=num_tokens)
        self.in_shape, self.variable_axes = (1, int(max_samples)), (1,)
        self.features = LogMel(sample_rate, n_fft, hop_length, n_mels)
        self.max_frames = self.features.num_frames(max_samples)
        if min(n_mels, self.max_frames) < patch_size:
            raise ValueError(
                f"voice/breath ast: n_mels ({n_mels}) and frames ({self.max_frames}) must be >= "
                f"patch_size ({patch_size})"
            )
        config = ASTConfig(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            patch_size=patch_size,
            num_mel_bins=n_mels,
            max_length=self.max_frames,
            frequency_stride=frequency_stride,
            time_stride=time_stride,
        )
        self.ast = ASTModel(config)
        self._mask_attention = "attention_mask" in inspect.signature(ASTModel.forward).parameters
        self.patch_size, self.time_stride = patch_size, time_stride
        self.grid = self.ast.embeddings.get_shape(config)  # (frequency patches, time patches)
        self.pool = MaskedTokenPool(hidden_size, num_tokens, d_model)

    def _init_module(self, name: str, module: nn.Module) -> None:
        if name != "ast.embeddings":  # AST's cls/distillation tokens and position table
            return super()._init_module(name, module)
        for p in (module.cls_token, module.distillation_token, module.position_embeddings):
            nn.init.trunc_normal_(p, std=0.02)

    def encode(self, data: Tensor, mask: Tensor | None, value: Tensor | None) -> Tensor:
        feats, frames = self.features(data, mask)  # [N, F, T], [N, T]
        pad = self.max_frames - feats.shape[-1]
        feats, frames = F.pad(feats, (0, pad)), F.pad(frames.float(), (0, pad))
        time_ok = F.max_pool1d(frames[:, None], self.patch_size, self.time_stride)[:, 0] > 0  # [N, time patches]
        n, (fp, tp) = data.shape[0], self.grid
        keep = torch.cat([time_ok.new_ones(n, 2), time_ok[:, None].expand(n, fp, tp).reshape(n, -1)], dim=1)
        kwargs = {"attention_mask": keep} if self._mask_attention else {}
        out = self.ast(input_values=feats.transpose(1, 2), **kwargs).last_hidden_state
        return self.pool(out, keep)
