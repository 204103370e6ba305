"""Prediction heads on a person's embedding, and the targets they learn from a label seen at a landmark.

Three kinds (``HeadConfig.kind``):

- ``classification``: with a label time, "does the outcome (label value >= 1) happen within
  ``horizon_days`` after the landmark"; a subject censored (value 0) before the horizon ends is not
  eligible. Without a label time: the label value is the class (``num_classes`` classes).
- ``regression``: the label value, scaled as ``(value - center) / scale``.
- ``survival``: time to event with competing risks, in discrete time: ``bins`` equal bins over
  ``horizon_days``; per bin a softmax over "no event" and each of ``causes`` causes (a discrete-time
  cause-specific hazard model). Label value 0 = censored at the label time, k = cause k. The forecast is
  the cumulative incidence of each cause. With ``proportional``, a person's log-odds of each cause in a bin
  (against no event) are a baseline per bin plus one score per cause that every bin shares: the discrete-time
  proportional-odds model (Cox's in discrete time; pycox's logistic hazard with one linear predictor), where
  each bin's own weights (the default) let a late bin, with few people at risk, rank people on its own.

A subject whose outcome (or censoring) comes at or before the landmark is not at risk there: not eligible.

``HeadConfig.covariates``: what a clinical model always has beside the embedding, fed to the head next to it:
``age`` (at the landmark, i.e. the history's last event, as (years - 60) / 15) and any static
covariate of the shards (``sex_male``; missing -> 0). Age is the strongest single predictor of most
outcomes; a head that must dig it out of a 256-d embedding with a few hundred people learns it poorly.

``HeadConfig.lr_scale``: the head's layers learn at ``lr_scale`` x the optimizer's rate. ``optim.lr`` is set for
weights that start somewhere useful (the pretrained model, at ``backbone_lr_ratio`` of it); the head starts from
nothing and a downstream run is short (a small cohort, some 100-200 steps), so at that rate its weights barely
leave their initialisation and every person gets the same forecast (the base rate). It is a fixed gain on each of
the head's linear layers (weights stored divided by it): under Adam(W), whose steps do not depend on the
gradient's scale, that is the same as a larger learning rate for the head alone, in every mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.schema import Label, OmniBatch

from ..model.omni import DAYS_PER_YEAR

KINDS = ("classification", "regression", "survival")


@dataclass
class HeadConfig:
    kind: str = "survival"
    label: str = "disease"
    horizon_days: float = 5 * 365.25
    num_classes: int = 2  # classification without a label time
    bins: int = 10  # survival
    causes: int = 1  # survival: label values 1..causes
    center: float = 0.0  # regression
    scale: float = 1.0  # regression
    hidden: int = 0  # 0: linear head; else one hidden layer
    dropout: float = 0.1
    covariates: tuple[str, ...] = ()  # "age" and/or static covariates ("sex_male") next to the embedding
    #: the head learns at lr_scale x optim.lr (module docstring); 1.0 in checkpoints written before it existed
    lr_scale: float = 1.0
    #: survival: one score per cause shared by every bin, a baseline per bin (module docstring)
    proportional: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"config key head.kind: {self.kind!r}; use one of {list(KINDS)}")
        if self.horizon_days <= 0 or self.bins < 1 or self.causes < 1 or self.scale <= 0 or not self.lr_scale > 0:
            raise ValueError(
                "config keys head.horizon_days, head.bins, head.causes, head.scale, head.lr_scale must be positive"
            )
        if self.proportional and self.kind != "survival":
            raise ValueError(
                f"config key head.proportional: true applies to survival heads only (head.kind is {self.kind!r}); "
                "drop it, or use head=survival"
            )
        self.covariates = tuple(self.covariates or ())

    @property
    def out_dim(self) -> int:
        if self.kind == "survival":
            return self.causes if self.proportional else self.bins * (self.causes + 1)
        if self.kind == "regression":
            return 1
        return 1 if self.num_classes == 2 else self.num_classes


def target(cfg: HeadConfig, label: Label | None, landmark_days: float) -> tuple[dict[str, float] | None, str]:
    """The training target for a subject at ``landmark_days``, or ``(None, reason)`` if not eligible."""
    if label is None:
        return None, f"no label {cfg.label!r}"
    timed = not math.isnan(label.time_days)
    if timed and label.time_days <= landmark_days:
        return None, "outcome or censoring at or before the landmark"
    if cfg.kind == "regression":
        return {"y": (label.value - cfg.center) / cfg.scale}, ""
    if cfg.kind == "classification":
        if not timed:
            if not 0 <= label.value < cfg.num_classes or label.value != int(label.value):
                return None, f"label value {label.value} is not a class in 0..{cfg.num_classes - 1}"
            return {"y": float(label.value)}, ""
        dt = label.time_days - landmark_days
        if label.value >= 1 and dt <= cfg.horizon_days:
            return {"y": 1.0}, ""
        if dt > cfg.horizon_days:
            return {"y": 0.0}, ""
        return None, "censored before the horizon"
    if not timed:
        return None, "survival label without a time"
    cause = int(label.value)
    if cause != label.value or not 0 <= cause <= cfg.causes:
        return None, f"label value {label.value} is not 0 (censored) or a cause 1..{cfg.causes}"
    return {"time": label.time_days - landmark_days, "event": float(cause)}, ""


def covariates(names: tuple[str, ...], batch: OmniBatch) -> Tensor | None:
    """``[B, len(names)]``: ``age`` at each subject's last event ((years - 60) / 15) and static covariates
    by name (missing -> 0). ``None`` without covariates."""
    if not names:
        return None
    cols = []
    for name in names:
        if name == "age":
            age = torch.full((len(batch),), float("-inf"), device=batch.num_events.device)
            for mb in batch.modalities.values():
                age = age.scatter_reduce(0, mb.subject, mb.age_days.to(age), reduce="amax")
            cols.append((age.clamp(min=0) / DAYS_PER_YEAR - 60.0) / 15.0)
        elif name in batch.static:
            cols.append(torch.nan_to_num(batch.static[name].float(), nan=0.0))
        else:
            raise ValueError(
                f"config key head.covariates: {name!r} is neither 'age' nor a static covariate of the "
                f"data (it has {sorted(batch.static)})"
            )
    return torch.stack(cols, -1)


class GainLinear(nn.Linear):
    """``gain * (x W^T + b)``, its parameters initialised as ``nn.Linear``'s divided by ``gain``: the same function
    at initialisation, learning ``gain`` times faster under Adam(W) (``HeadConfig.lr_scale``)."""

    def __init__(self, in_features: int, out_features: int, gain: float = 1.0) -> None:
        super().__init__(in_features, out_features)
        self.gain = float(gain)
        with torch.no_grad():
            self.weight.div_(self.gain)
            self.bias.div_(self.gain)

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return out * self.gain if self.gain != 1.0 else out


class Head(nn.Module):
    def __init__(self, cfg: HeadConfig, d_model: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = nn.Sequential(nn.LayerNorm(d_model), nn.Dropout(cfg.dropout))
        width = d_model + len(cfg.covariates)
        layers: list[nn.Module] = []
        if cfg.hidden:
            layers += [GainLinear(width, cfg.hidden, cfg.lr_scale), nn.GELU(), nn.Dropout(cfg.dropout)]
        layers.append(GainLinear(cfg.hidden or width, cfg.out_dim, cfg.lr_scale))
        self.net = nn.Sequential(*layers)
        if cfg.kind == "survival":  # start from a small hazard per bin (~3%), not 50%: forecasts begin plausible
            with torch.no_grad():
                last = self.net[-1]
                last.weight.mul_(0.1)
                none, cause = math.log(0.97) / last.gain, math.log(0.03 / cfg.causes) / last.gain
                if cfg.proportional:  # the bins' log-odds, learning at lr_scale as the layers do (stored / gain)
                    last.bias.zero_()
                    self.baseline = nn.Parameter(torch.full((cfg.bins, cfg.causes), cause - none))
                else:
                    bias = last.bias.view(cfg.bins, cfg.causes + 1)
                    bias[:, 0], bias[:, 1:] = none, cause
        edges = torch.linspace(0.0, cfg.horizon_days, cfg.bins + 1)
        self.register_buffer("edges", edges, persistent=False)

    def forward(self, emb: Tensor, cov: Tensor | None = None) -> Tensor:
        x = self.norm(emb)
        if self.cfg.covariates:
            if cov is None or cov.shape[-1] != len(self.cfg.covariates):
                raise ValueError(f"head.covariates {list(self.cfg.covariates)}: pass their values (heads.covariates)")
            x = torch.cat([x, cov.to(x.dtype)], -1)
        out = self.net(x)
        if self.cfg.kind != "survival":
            return out
        if not self.cfg.proportional:
            return out.view(-1, self.cfg.bins, self.cfg.causes + 1)
        causes = self.baseline * self.net[-1].gain + out[:, None, :]  # [B, bins, causes]
        return torch.cat([torch.zeros_like(causes[..., :1]), causes], -1)

    # -- losses ------------------------------------------------------------------------------------
    def loss(self, out: Tensor, tgt: dict[str, Tensor]) -> Tensor:
        kind = self.cfg.kind
        if kind == "regression":
            return F.mse_loss(out.squeeze(-1), tgt["y"])
        if kind == "classification":
            if out.shape[-1] == 1:
                return F.binary_cross_entropy_with_logits(out.squeeze(-1), tgt["y"])
            return F.cross_entropy(out, tgt["y"].long())
        return self.survival_nll(out, tgt["time"], tgt["event"].long())

    def bin_of(self, time: Tensor) -> Tensor:
        """Bin index of each time; ``bins`` for times past the horizon."""
        return (
            torch.bucketize(time, self.edges[1:-1].to(time), right=True)
            .clamp(max=self.cfg.bins - 1)
            .masked_fill(time > self.cfg.horizon_days, self.cfg.bins)
        )

    def survival_nll(self, logits: Tensor, time: Tensor, event: Tensor) -> Tensor:
        """Discrete-time competing-risks likelihood: survive every bin before the event's (or censoring's)
        bin, then the event's cause in its bin. A subject censored in a bin counts as at risk only
        before it; beyond the horizon, as surviving every bin."""
        logp = logits.float().log_softmax(-1)  # [B, bins, 1 + causes]
        j = self.bin_of(time.float())  # [B]
        bins = torch.arange(self.cfg.bins, device=logits.device)
        survived = (bins[None, :] < j[:, None]).float()  # bins fully survived
        ll = (logp[..., 0] * survived).sum(1)
        has_event = (event > 0) & (j < self.cfg.bins)
        jj = j.clamp(max=self.cfg.bins - 1)
        ll = ll + torch.where(has_event, logp[torch.arange(len(j)), jj, event.clamp(min=0)], torch.zeros_like(ll))
        return -ll.mean()

    # -- forecasts --------------------------------------------------------------------------------
    def predict(self, out: Tensor) -> Tensor:
        """Classification: probability of the positive class (``[B]``) or of each class; regression: the
        value in label units; survival: cumulative incidence ``[B, bins, causes]`` at each bin's end."""
        kind = self.cfg.kind
        if kind == "regression":
            return out.squeeze(-1) * self.cfg.scale + self.cfg.center
        if kind == "classification":
            return torch.sigmoid(out.squeeze(-1)) if out.shape[-1] == 1 else out.softmax(-1)
        p = out.float().softmax(-1)  # [B, bins, 1 + causes]
        alive_before = torch.cumprod(torch.cat([torch.ones_like(p[:, :1, 0]), p[:, :-1, 0]], 1), 1)
        return torch.cumsum(alive_before[..., None] * p[..., 1:], 1)

    def risk(self, out: Tensor, cause: int = 1) -> Tensor:
        """One score per subject (higher = worse): probability (classification), value (regression),
        cumulative incidence of ``cause`` at the horizon (survival)."""
        pred = self.predict(out)
        if self.cfg.kind == "survival":
            return pred[:, -1, cause - 1]
        return pred if pred.ndim == 1 else pred[:, -1]


__all__ = ["GainLinear", "Head", "HeadConfig", "KINDS", "covariates", "target"]
