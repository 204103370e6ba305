"""The omnimodal model: per-modality encoders -> timeline tokens -> longitudinal backbone.

``OmniModel(batch)`` encodes each modality present once (no per-sample loop), adds modality, token-slot
and age/time embeddings, packs subjects into rows and runs the block-causal backbone. The output keeps
both the encoders' tokens (targets for objectives) and the contextual tokens, per instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from datamodules.schema import OmniBatch
from encoders import build_encoder

from .backbone import Backbone, BackboneConfig
from .packing import Packed, pack

DAYS_PER_YEAR = 365.25
#: the rows of modality_emb / mask_emb in checkpoints and releases written before the modality registry
#: (a stored model config without ``embedding_rows``): one row per modality of the framework then, whatever
#: encoders the model had. A historical fact about old files, not a list of modalities to extend.
LEGACY_EMBEDDING_ROWS: tuple[str, ...] = (
    "mri",
    "ecg",
    "voice",
    "breath",
    "gait",
    "face",
    "wearable",
    "omics",
    "clinical",
)


@dataclass
class EncoderSpec:
    """An encoder by registry name and JSON kwargs (never an import path)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    encoders: dict[str, EncoderSpec] = field(default_factory=dict)  # modality -> encoder
    row_len: int | None = None  # packed row length (None: longest subject in the batch)
    max_tokens_per_instance: int = 16
    #: the modality of each row of the modality and mask embeddings; None: the encoders, in order. Stored
    #: configs always say it (:func:`with_embedding_rows` reads an old one).
    embedding_rows: list[str] | None = None

    def rows(self) -> list[str]:
        return list(self.embedding_rows) if self.embedding_rows is not None else list(self.encoders)


def with_embedding_rows(d: dict[str, Any]) -> dict[str, Any]:
    """A stored model config (plain data) with its ``embedding_rows``: a config written before the modality
    registry has none, and its embeddings have :data:`LEGACY_EMBEDDING_ROWS`."""
    return d if "embedding_rows" in d else {**d, "embedding_rows": list(LEGACY_EMBEDDING_ROWS)}


@dataclass
class Instances:
    """Per-instance tables of a batch, instances ordered modality by modality (the model's encoder order)."""

    modality: Tensor  # [I] row of the modality embedding (ModelConfig.rows())
    subject: Tensor  # [I]
    event: Tensor  # [I]
    time_days: Tensor  # [I]
    slices: dict[str, slice]  # modality -> its rows in [I]


@dataclass
class ModelOutput:
    encoded: dict[str, Tensor]  # modality -> encoder tokens [N_m, k, d]
    context: dict[str, Tensor]  # modality -> backbone tokens [N_m, k, d]
    instances: Instances
    packed: Packed

    def pooled(self, which: str = "context") -> Tensor:
        """Mean over each instance's tokens: ``[I, d]`` in instance order."""
        src = self.context if which == "context" else self.encoded
        return torch.cat([src[m].mean(1) for m in self.instances.slices], 0)


class OmniModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.backbone.d_model
        if not cfg.encoders:
            raise ValueError("model.encoders is empty: a model needs at least one modality encoder")
        rows = cfg.rows()
        missing = [m for m in cfg.encoders if m not in rows]
        if missing or len(set(rows)) != len(rows):
            raise ValueError(f"model embedding_rows {rows} must name each encoder's modality once (missing {missing})")
        #: modality -> its row of the modality and mask embeddings
        self.row = {m: rows.index(m) for m in cfg.encoders}
        self._rows = rows
        self.encoders = nn.ModuleDict()
        for m, spec in cfg.encoders.items():
            enc = build_encoder(spec.name, **{**spec.kwargs, "d_model": d})
            if enc.modality != m:
                raise ValueError(f"model.encoders.{m}: encoder {spec.name!r} is for modality {enc.modality!r}")
            self.encoders[m] = enc
        self.modality_emb = nn.Embedding(len(rows), d)
        self.slot_emb = nn.Embedding(cfg.max_tokens_per_instance, d)
        self.time_emb = nn.Sequential(nn.Linear(4, d), nn.GELU(), nn.Linear(d, d))
        # a module, not a bare Parameter used in forward: ZeRO-3 gathers a module's weights when the module
        # runs (forward and backward), and OmniModel's own output (a dataclass) gets no backward hook
        self.mask_emb = nn.Embedding(len(rows), d, _weight=torch.zeros(len(rows), d))  # no RNG draw
        self.backbone = Backbone(cfg.backbone)
        self._init_embeddings()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re-)initialise every parameter and buffer: after building on the meta device and ``to_empty``."""
        for enc in self.encoders.values():
            enc.init_weights()
        for module in [self.modality_emb, self.slot_emb, *self.time_emb, *self.backbone.modules()]:
            if module is not self.backbone and callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
        self._init_embeddings()

    @torch.no_grad()
    def _init_embeddings(self) -> None:
        """Modality, slot and mask embeddings ~ N(0, 0.02), not ``nn.Embedding``'s N(0, 1): vectors of norm
        ~sqrt(d) would dwarf the encoders' tokens and the time features, so every token would mostly say
        which modality and slot it is (and a subject embedding which modalities its last event had), and
        a short pretraining could not move them (tests/test_learning.py measures the difference)."""
        for weight in (self.modality_emb.weight, self.slot_emb.weight, self.mask_emb.weight):
            nn.init.normal_(weight, std=0.02)

    @property
    def order(self) -> list[str]:
        """The order encoders run and tokens are laid out in: the rows' order (a list in every stored config;
        the encoders mapping may come back in another order, e.g. from a JSON file with sorted keys)."""
        return [m for m in self._rows if m in self.encoders]

    @property
    def d_model(self) -> int:
        return self.cfg.backbone.d_model

    def encode(self, batch: OmniBatch) -> dict[str, Tensor]:
        """Each modality present in the batch through its encoder, once: ``[N_m, k, d]``."""
        return self.encode_all(batch)[0]

    def encode_all(self, batch: OmniBatch) -> tuple[dict[str, Tensor], Tensor]:
        """Every encoder, in the model's fixed order: present modalities on their data, absent ones on an
        empty input. Returns the present modalities' tokens and a zero that depends on every absent
        encoder, so those get zero gradients instead of none (DDP and ZeRO never wait for a missing
        gradient). The order is the same on every process whatever its batch holds: FSDP and ZeRO-3 gather
        an encoder's weights when it runs, and processes must gather the same weights in the same order."""
        for m in batch.modalities:
            if m not in self.encoders:
                raise ValueError(
                    f"batch has modality {m!r} but the model has no encoder for it; "
                    f"add model.encoders.{m} or drop the modality from the data"
                )
        device = next(iter(batch.modalities.values())).data.device
        out, zero = {}, torch.zeros((), device=device)
        for m in self.order:
            enc = self.encoders[m]
            if m in batch.modalities:
                mb = batch.modalities[m]
                out[m] = enc(mb.data, mb.mask, mb.value)
            else:
                zero = zero + enc(torch.zeros(0, *enc.in_shape, dtype=enc.in_dtype, device=device)).sum()
        return out, zero

    def forward(self, batch: OmniBatch, hold_out: dict[str, Tensor] | None = None) -> ModelOutput:
        """``hold_out``: modality -> bool ``[N_m]`` instances whose tokens the backbone does not see
        (replaced by the modality's mask embedding), for masked-modality modelling."""
        encoded, absent = self.encode_all(batch)
        mask_vecs = self.mask_emb(torch.arange(self.mask_emb.num_embeddings, device=absent.device))  # every process
        order = [m for m in self.order if m in encoded]
        tokens, subj, ev, tm, age, slot, mod, slices, i0 = [], [], [], [], [], [], [], {}, 0
        inst_mod, inst_subj, inst_ev, inst_tm = [], [], [], []
        for m in order:
            x, mb = encoded[m], batch.modalities[m]
            n, k, _ = x.shape
            midx = self.row[m]
            if hold_out is not None and m in hold_out:
                x = torch.where(hold_out[m][:, None, None], mask_vecs[midx].to(x.dtype), x)
            tokens.append(x.reshape(n * k, -1))
            for dst, src in ((subj, mb.subject), (ev, mb.event), (tm, mb.time_days), (age, mb.age_days)):
                dst.append(src.repeat_interleave(k))
            slot.append(torch.arange(k, device=x.device).repeat(n))
            mod.append(torch.full((n * k,), midx, device=x.device, dtype=torch.long))
            inst_mod.append(torch.full((n,), midx, device=x.device, dtype=torch.long))
            inst_subj.append(mb.subject)
            inst_ev.append(mb.event)
            inst_tm.append(mb.time_days)
            slices[m] = slice(i0, i0 + n)
            i0 += n
        x = torch.cat(tokens) + absent
        t, a = torch.cat(tm), torch.cat(age)
        x = x + self.modality_emb(torch.cat(mod)) + self.slot_emb(torch.cat(slot)) + self.time_emb(time_features(t, a))
        # on CUDA or with FlexAttention, row lengths in steps of 128 so compiled kernels see few distinct shapes
        step = 128 if x.is_cuda or self.backbone.use_flex(x.device) else 8
        packed = pack(torch.cat(subj), torch.cat(ev), t, len(batch), self.cfg.row_len, pad_to=step)
        h = packed.gather(self.backbone(packed.scatter(x), packed))
        context, start = {}, 0
        for m in order:
            n, k, d = encoded[m].shape
            context[m] = h[start : start + n * k].view(n, k, d)
            start += n * k
        inst = Instances(torch.cat(inst_mod), torch.cat(inst_subj), torch.cat(inst_ev), torch.cat(inst_tm), slices)
        return ModelOutput(encoded, context, inst, packed)

    @torch.no_grad()
    def embed(self, batch: OmniBatch) -> Tensor:
        """One vector per subject ``[B, d]``: the backbone tokens of its last event, averaged (they have
        seen the whole history through block-causal attention)."""
        out = self.forward(batch)
        return subject_embedding(out, len(batch))


def subject_embedding(out: ModelOutput, num_subjects: int) -> Tensor:
    """Mean of the contextual tokens of each subject's last event: ``[B, d]``."""
    pooled, inst = out.pooled("context"), out.instances
    last = torch.full((num_subjects,), -1, dtype=torch.long, device=pooled.device)
    last = last.scatter_reduce(0, inst.subject, inst.event, reduce="amax")
    sel = (inst.event == last[inst.subject]).float()
    s = torch.zeros(num_subjects, pooled.shape[1], device=pooled.device).index_add_(
        0, inst.subject, pooled * sel[:, None]
    )
    c = torch.zeros(num_subjects, device=pooled.device).index_add_(0, inst.subject, sel)
    return s / c.clamp(min=1)[:, None]


def time_features(time_days: Tensor, age_days: Tensor) -> Tensor:
    """Age at the event and time since the first event, on scales a network can use: ``[T, 4]``."""
    ty, ay = time_days.float() / DAYS_PER_YEAR, age_days.float() / DAYS_PER_YEAR
    return torch.stack([ay / 100.0, torch.log1p(ay.clamp(min=0)) / 5, ty / 10.0, torch.log1p(ty.clamp(min=0))], -1)


def count_parameters(module: nn.Module) -> dict[str, int]:
    enc = sum(p.numel() for p in module.encoders.parameters()) if hasattr(module, "encoders") else 0
    total = sum(p.numel() for p in module.parameters())
    return {"total": total, "encoders": enc, "backbone_and_heads": total - enc}
