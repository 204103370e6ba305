"""Pretraining objectives, weighted and composable from config.

- ``masked``: masked-modality modelling in latent space. Some instances are held out (the backbone
  sees a mask embedding in their place); from the rest of the timeline the model predicts their
  encoder tokens, scored contrastively against every other held-out token in the batch (InfoNCE), so
  encoders cannot collapse to a constant.
- ``contrastive``: cross-modal alignment: encoder embeddings of two different modalities measured at
  the same event are positives (InfoNCE over all instances of the batch).
- ``forecast``: next-event forecasting: from the causal context of event e (which has seen events
  <= e only), predict the pooled encoder embedding of event e+1 (InfoNCE) and the log time gap.
- ``tte``: time-to-event pretraining, as MOTOR does (Steinberg et al., ICLR 2024): from the causal context of
  each event, the time until each clinical code of the vocabulary next occurs in the person's timeline (censored
  at their last event in the batch), under a piecewise-exponential model: per time bin (:data:`TTE_EDGES_DAYS`)
  a log-hazard ``f_b(context) . u_code + bias_{b,code}`` (a low-rank product, MOTOR's ``tte_rank``). The
  negative log-likelihood is summed over bins, codes and events and divided by the events' count x the codes'
  count. A model without a clinical encoder has no codes: the loss is 0. Built only when ``tte_weight > 0`` (a
  model pretrained without it has no such head).

Every objective returns 0 (connected to the graph) when a batch gives it nothing to do, e.g. a batch
of single-event timelines for forecasting; absent modalities never break a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.schema import OmniBatch

from ..model.omni import ModelOutput, OmniModel


def info_nce(
    pred: Tensor, target: Tensor, positives: Tensor | None = None, temperature: float = 0.1, exclude_self: bool = False
) -> Tensor:
    """Mean InfoNCE of ``pred [n, d]`` against ``target [m, d]``; ``positives [n, m]`` bool (default: the
    diagonal). Rows without a positive are left out; ``exclude_self`` drops the diagonal from the
    candidates (for ``pred is target``)."""
    logits = F.normalize(pred, dim=-1) @ F.normalize(target, dim=-1).T / temperature
    eye = torch.eye(pred.shape[0], target.shape[0], dtype=torch.bool, device=pred.device)
    if positives is None:
        positives = eye
    if exclude_self:
        logits = logits.masked_fill(eye, float("-inf"))
    has = positives.any(1)
    if not has.any():
        return pred.sum() * 0.0
    logits, positives = logits[has], positives[has]
    pos = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), 1)
    return (torch.logsumexp(logits, 1) - pos).mean()


@dataclass
class ObjectiveConfig:
    masked_weight: float = 1.0
    contrastive_weight: float = 0.5
    forecast_weight: float = 0.5
    mask_fraction: float = 0.25
    temperature: float = 0.1
    proj_dim: int = 64
    tte_weight: float = 0.0
    tte_rank: int = 32


#: the ``tte`` objective's piecewise-constant hazard bins, days after the event (the last one open-ended)
TTE_EDGES_DAYS: tuple[float, ...] = (0.0, 30.0, 91.0, 182.0, 365.0, 730.0, 1461.0, 2922.0)


class Objectives(nn.Module):
    """The heads and losses of pretraining. ``forward(model, batch, generator)`` -> dict of losses
    (``loss`` is their weighted sum)."""

    def __init__(self, cfg: ObjectiveConfig, d_model: int, num_codes: int = 0) -> None:
        """``num_codes``: the clinical encoder's vocabulary size (code ids ``1..num_codes-1``; 0 = none), what
        the ``tte`` objective predicts the times of."""
        super().__init__()
        self.cfg = cfg
        self.masked_head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.align_proj = nn.Linear(d_model, cfg.proj_dim)
        self.forecast_head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, d_model + 1))
        if cfg.tte_weight > 0:
            bins, rank = len(TTE_EDGES_DAYS), int(cfg.tte_rank)
            self.num_codes = max(int(num_codes), 1)
            self.tte_proj = nn.Linear(d_model, bins * rank)
            self.tte_code = nn.Embedding(self.num_codes, rank)
            # each bin and code starts at a small hazard (~0.05 a year): most codes are rare
            self.tte_bias = nn.Embedding(self.num_codes, bins, _weight=torch.full((self.num_codes, bins), -3.0))
            nn.init.normal_(self.tte_code.weight, std=rank**-0.5)

    def forward(
        self, model: OmniModel, batch: OmniBatch, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        hold = self.choose_held_out(batch, generator) if self.cfg.masked_weight > 0 else None
        out = model(batch, hold_out=hold)
        losses: dict[str, Tensor] = {}
        if self.cfg.masked_weight > 0:
            losses["masked"] = self.masked(out, hold)
        if self.cfg.contrastive_weight > 0:
            losses["contrastive"] = self.contrastive(out)
        if self.cfg.forecast_weight > 0:
            losses["forecast"] = self.forecast(out, len(batch))
        if self.cfg.tte_weight > 0:
            losses["tte"] = self.tte(out, batch)
        w = {
            "masked": self.cfg.masked_weight,
            "contrastive": self.cfg.contrastive_weight,
            "forecast": self.cfg.forecast_weight,
            "tte": self.cfg.tte_weight,
        }
        losses["loss"] = sum(w[k] * v for k, v in losses.items())
        return losses

    def choose_held_out(self, batch: OmniBatch, generator: torch.Generator | None) -> dict[str, Tensor]:
        """Hold out ``mask_fraction`` of the instances at random, but never every instance of a subject."""
        mods = list(batch.modalities)
        subj = torch.cat([batch.modalities[m].subject for m in mods])
        held = (torch.rand(len(subj), generator=generator) < self.cfg.mask_fraction).to(subj.device)
        visible = torch.bincount(subj[~held], minlength=len(batch))
        cand = torch.nonzero((visible == 0)[subj] & held).flatten()
        if cand.numel():
            held[cand[_first_per_group(subj[cand])]] = False
        return dict(zip(mods, held.split([len(batch.modalities[m]) for m in mods])))

    def masked(self, out: ModelOutput, hold: dict[str, Tensor] | None) -> Tensor:
        # every head runs once per step, on whatever it gets (even nothing): processes whose batches differ
        # still use (DDP) and gather (FSDP, ZeRO-3) the same weights in the same order
        held = [m for m, h in (hold or {}).items() if h.any()]
        ctx = [out.context[m][hold[m]].flatten(0, 1) for m in held]
        targets = [
            F.layer_norm(out.encoded[m][hold[m]], out.encoded[m].shape[-1:]).detach().flatten(0, 1) for m in held
        ]
        d = self.masked_head[0].in_features
        pred = self.masked_head(torch.cat(ctx) if ctx else _zero(out).expand(0, d))
        if not held:
            return pred.sum() * 0.0
        return info_nce(pred, torch.cat(targets), temperature=self.cfg.temperature)

    def contrastive(self, out: ModelOutput) -> Tensor:
        inst = out.instances
        z = self.align_proj(out.pooled("encoded"))
        same_event = (inst.subject[:, None] == inst.subject[None]) & (inst.event[:, None] == inst.event[None])
        positives = same_event & (inst.modality[:, None] != inst.modality[None])
        return info_nce(z, z, positives, self.cfg.temperature, exclude_self=True)

    def forecast(self, out: ModelOutput, num_subjects: int) -> Tensor:
        # one row per (subject, event): mean context and mean encoder embedding of the event
        rows = event_rows(out, encoded=True)
        ev_ctx, ev_enc, ev_time, ev_subj = rows.context, rows.encoded, rows.time, rows.subject
        n = len(ev_time)
        nxt = torch.arange(1, n + 1, device=ev_ctx.device).clamp(max=n - 1)  # rows are sorted: the next event
        valid = (torch.arange(n, device=ev_ctx.device) < n - 1) & (ev_subj[nxt] == ev_subj)
        pred = self.forecast_head(ev_ctx[valid])  # run even when empty (see masked)
        if not valid.any():
            return pred.sum() * 0.0
        gap = torch.log1p((ev_time[nxt] - ev_time)[valid].clamp(min=0))
        emb_loss = info_nce(pred[:, :-1], ev_enc[nxt][valid], temperature=self.cfg.temperature)
        return emb_loss + F.mse_loss(pred[:, -1], gap)

    def tte(self, out: ModelOutput, batch: OmniBatch) -> Tensor:
        """Time-to-event pretraining (module docstring): ``-log L / (events x codes)``."""
        rows = event_rows(out)
        bins = len(TTE_EDGES_DAYS)
        f = self.tte_proj(rows.context).view(len(rows.time), bins, -1)  # run even when empty (see masked)
        log_h = torch.einsum("ebr,kr->ebk", f, self.tte_code.weight) + self.tte_bias.weight.T[None]  # [E, bins, K]
        clinical = batch.modalities.get("clinical")
        if clinical is None or len(clinical) == 0 or len(rows.time) == 0:
            return log_h.sum() * 0.0
        code = clinical.data.long().clamp(0, self.num_codes - 1)
        t_occ = clinical.time_days.float()
        # the next time each code occurs after each event, in the same person's (cropped) timeline; inf if never
        later = (clinical.subject[None] == rows.subject[:, None]) & (clinical.event[None] > rows.event[:, None])
        later &= (code > 0)[None]
        when = torch.where(later, t_occ[None].expand_as(later), torch.inf)
        nxt = torch.full((len(rows.time), self.num_codes), torch.inf, device=when.device)
        nxt = nxt.scatter_reduce(1, code[None].expand_as(when), when, reduce="amin")
        end = torch.full((len(batch),), -torch.inf, device=when.device)
        end = end.scatter_reduce(0, rows.subject, rows.time, reduce="amax")[rows.subject]  # last event in view
        event = torch.isfinite(nxt)
        follow = torch.where(event, nxt, end[:, None]) - rows.time[:, None]  # days [E, K], event or censoring
        edges = torch.tensor(TTE_EDGES_DAYS, device=follow.device)
        upper = torch.cat([edges[1:], edges.new_tensor([torch.inf])])
        exposure = (torch.minimum(follow[:, None], upper[None, :, None]) - edges[None, :, None]).clamp(min=0) / 365.25
        in_bin = (follow[:, None] >= edges[None, :, None]) & (follow[:, None] < upper[None, :, None])
        nll = (log_h.exp() * exposure).sum(1) - (log_h * in_bin).sum(1) * event  # [E, K]
        nll[:, 0] = 0.0  # code id 0: unknown codes, no task
        return nll.sum() / (len(rows.time) * max(self.num_codes - 1, 1))


@dataclass
class EventRows:
    """One row per (subject, event) of a batch, in (subject, event) order: its subject, event index, time (days)
    and mean contextual token (and mean encoder token, detached, where asked for)."""

    subject: Tensor
    event: Tensor
    time: Tensor
    context: Tensor
    encoded: Tensor | None = None


def event_rows(out: ModelOutput, encoded: bool = False) -> EventRows:
    inst = out.instances
    ctx = out.pooled("context")
    stride = int(inst.event.max()) + 2 if len(inst.event) else 1
    uniq, group = torch.unique(inst.subject * stride + inst.event, return_inverse=True)
    n = len(uniq)
    cnt = torch.zeros(n, device=ctx.device).index_add_(0, group, torch.ones_like(group, dtype=torch.float))

    def mean(x: Tensor) -> Tensor:
        total = torch.zeros(n, *x.shape[1:], device=ctx.device).index_add_(0, group, x)
        return total / cnt.view(-1, *[1] * (x.dim() - 1))

    subject = torch.div(uniq, stride, rounding_mode="floor")
    return EventRows(
        subject,
        uniq - subject * stride,
        mean(inst.time_days.float()),
        mean(ctx),
        mean(out.pooled("encoded").detach()) if encoded else None,
    )


def _first_per_group(groups: Tensor) -> Tensor:
    """Index of the first element of each distinct value in ``groups`` (1-D)."""
    _, inverse = torch.unique(groups, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(groups), dtype=torch.long, device=groups.device)
    return first.scatter_reduce(0, inverse, torch.arange(len(groups), device=groups.device), reduce="amin")


def _zero(out: ModelOutput) -> Tensor:
    return next(iter(out.context.values())).sum() * 0.0
