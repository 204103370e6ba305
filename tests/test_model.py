"""Model: packing changes nothing, attention is block-causal in continuous time, objectives survive
absent modalities, and every parameter learns; the ``tte`` objective (time to each clinical code's next occurrence,
piecewise exponential, as MOTOR) against its likelihood written out, and that it learns."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.collate import Collator
from datamodules.loader import CropConfig, ShardDataset
from datamodules.modalities import registry
from datamodules.schema import Event, Timeline, specs_from_json
from omnimodal.model.backbone import BackboneConfig, block_causal_mask
from omnimodal.model.omni import EncoderSpec, ModelConfig, OmniModel
from omnimodal.model.packing import pack
from omnimodal.pretraining.objectives import TTE_EDGES_DAYS, ObjectiveConfig, Objectives, event_rows


@pytest.fixture(scope="module")
def data(shards: Path) -> tuple[list[Timeline], Collator]:
    ds = ShardDataset(shards, "train", shuffle=False, crop=CropConfig(max_events=5, random=False))
    return list(ds)[:6], Collator(ds.specs, ds.index["clinical_codes"])


def make_model(shards: Path, seed: int = 0, **backbone) -> OmniModel:
    from datamodules.shards.format import load_index

    index = load_index(shards)
    specs = specs_from_json(index["specs"])
    vocab = len(index["clinical_codes"]) + 1
    encoders = {
        m: EncoderSpec(registry()[m].default_encoder, {**specs[m].encoder_layout(vocab_size=vocab), "d_model": 32})
        for m in specs
    }
    torch.manual_seed(seed)
    return OmniModel(
        ModelConfig(BackboneConfig(d_model=32, n_layers=2, n_heads=4, **backbone), encoders, row_len=512)
    ).eval()


def _per_subject(out, batch, i: int) -> dict[str, torch.Tensor]:
    rows = {m: out.context[m][batch.modalities[m].subject == i] for m in out.context}
    return {m: r for m, r in rows.items() if len(r)}


def test_packing_changes_nothing(shards: Path, data) -> None:
    timelines, collate = data
    model = make_model(shards)
    batch = collate(timelines)
    with torch.no_grad():
        out = model(batch)
        assert out.packed.shape[0] < len(batch)  # several subjects share a row
        for i, tl in enumerate(timelines):
            alone = model(collate([tl]))
            for m, ctx in _per_subject(out, batch, i).items():
                torch.testing.assert_close(ctx, alone.context[m], atol=2e-5, rtol=1e-4)


def test_attention_is_block_causal_across_events(shards: Path, data) -> None:
    timelines, collate = data
    model = make_model(shards)
    tl = next(t for t in timelines if len(t.events) >= 3)
    cut = Timeline(tl.key, tl.static, tl.events[:2], tl.labels)
    with torch.no_grad():
        full, short = model(collate([tl])), model(collate([cut]))
    fb = collate([tl])
    for m in short.context:  # the first two events cannot see the later ones
        early = fb.modalities[m].event < 2
        torch.testing.assert_close(full.context[m][early], short.context[m], atol=2e-5, rtol=1e-4)
    later = [m for m in full.context if (fb.modalities[m].event >= 2).any()]
    assert later  # ...while later events do see the earlier ones (and so differ from an empty history)


def test_time_is_continuous_and_relative(shards: Path, data) -> None:
    """Rotary position is time in days: a shift of every time leaves attention unchanged; stretching the
    gaps between events changes it."""
    timelines, collate = data
    model = make_model(shards)
    tl = next(t for t in timelines if len(t.events) >= 3)

    def with_times(f) -> dict[str, torch.Tensor]:
        evs = [dataclasses.replace(e, time_days=f(e.time_days)) for e in tl.events]
        return model.backbone(*_scattered(model, collate([Timeline(tl.key, tl.static, evs, tl.labels)])))

    with torch.no_grad():
        base, shifted, stretched = with_times(lambda t: t), with_times(lambda t: t + 400.0), with_times(lambda t: 3 * t)
    torch.testing.assert_close(base, shifted, atol=1e-3, rtol=1e-3)
    assert (base - stretched).abs().max() > 1e-3


def _scattered(model: OmniModel, batch):
    """The backbone's inputs for a batch (same tokens whatever the times), to isolate rotary position."""
    encoded = model.encode(batch)
    subj, ev, tm, toks = [], [], [], []
    for m, x in encoded.items():
        k = x.shape[1]
        toks.append(x.reshape(-1, x.shape[-1]))
        subj.append(batch.modalities[m].subject.repeat_interleave(k))
        ev.append(batch.modalities[m].event.repeat_interleave(k))
        tm.append(batch.modalities[m].time_days.repeat_interleave(k))
    packed = pack(torch.cat(subj), torch.cat(ev), torch.cat(tm), len(batch))
    return packed.scatter(torch.cat(toks)), packed


def test_mask_never_crosses_subjects_or_looks_ahead() -> None:
    subject = torch.tensor([0, 0, 0, 1, 1, 2])
    event = torch.tensor([0, 0, 1, 0, 1, 0])
    p = pack(subject, event, torch.zeros(6), 3, row_len=8, pad_to=8)
    assert p.shape == (1, 8) and p.real_fraction() == 6 / 8
    m = block_causal_mask(p)[0, 0]
    allowed = {(q, k) for q in range(6) for k in range(6) if m[q, k]}
    assert allowed == {(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (3, 3), (4, 3), (4, 4), (5, 5)}
    padded = pack(subject, event, torch.zeros(6), 3, packed=False)
    assert padded.shape == (3, 8) and padded.real_fraction() < p.real_fraction()


def test_objectives_train_every_parameter_and_survive_absent_modalities(shards: Path, data) -> None:
    timelines, collate = data
    model = make_model(shards).train()
    obj = Objectives(ObjectiveConfig(), model.d_model)
    batch = collate(timelines)
    losses = obj(model, batch, torch.Generator().manual_seed(0))
    assert set(losses) == {"masked", "contrastive", "forecast", "loss"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    losses["loss"].backward()
    params = list(model.named_parameters()) + list(obj.named_parameters())
    assert [n for n, p in params if p.grad is None] == []
    # a batch of one modality and single-event timelines: nothing to align or forecast, still a valid step
    model.zero_grad()
    only = [
        Timeline(
            t.key,
            t.static,
            [
                Event(e.time_days, e.age_days, [m for m in e.measurements if m.modality == "clinical"])
                for e in t.events[:1]
            ],
            t.labels,
        )
        for t in timelines
    ]
    losses = obj(model, collate(only), torch.Generator().manual_seed(1))
    assert float(losses["contrastive"].detach()) == 0.0 and float(losses["forecast"].detach()) == 0.0
    losses["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters())  # DDP needs every grad...
    assert all(float(p.grad.abs().sum()) == 0.0 for p in model.encoders["mri"].parameters())  # ...zero if absent


def test_held_out_instances_never_hide_a_whole_subject(shards: Path, data) -> None:
    timelines, collate = data
    obj = Objectives(ObjectiveConfig(mask_fraction=0.99), 32)
    batch = collate(timelines)
    hold = obj.choose_held_out(batch, torch.Generator().manual_seed(0))
    for i in range(len(batch)):
        visible = sum(int((~hold[m][batch.modalities[m].subject == i]).sum()) for m in hold)
        assert visible >= 1


def test_meta_device_build_then_materialise(shards: Path, data) -> None:
    timelines, collate = data
    with torch.device("meta"):
        model = make_model(shards)
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.init_weights()
    with torch.no_grad():
        out = model(collate(timelines))
    assert all(torch.isfinite(c).all() for c in out.context.values())


@pytest.fixture(scope="module")
def tte_batch(shards: Path):
    ds = ShardDataset(shards, "train", shuffle=False, crop=CropConfig(max_events=6, random=False))
    timelines = list(ds)[:8]
    return Collator(ds.specs, ds.index["clinical_codes"])(timelines), timelines, ds.index["clinical_codes"]


def _direct_nll(timelines, codes, log_h: np.ndarray) -> float:
    """The piecewise-exponential negative log-likelihood written out event by event, code by code."""
    ids = {c: i + 1 for i, c in enumerate(codes)}
    edges = [*TTE_EDGES_DAYS, math.inf]
    total, rows = 0.0, 0
    for tl in timelines:
        times = [ev.time_days for ev in tl.events]
        for t in times:
            for k in range(1, log_h.shape[2]):
                after = [
                    ev.time_days
                    for ev in tl.events
                    if ev.time_days > t + 1e-6
                    for m in ev.measurements
                    if m.modality == "clinical" and ids.get(m.code) == k
                ]
                follow, event = (min(after) - t, True) if after else (max(times) - t, False)
                for b in range(len(TTE_EDGES_DAYS)):
                    exposure = max(min(follow, edges[b + 1]) - edges[b], 0.0) / 365.25
                    total += math.exp(log_h[rows, b, k]) * exposure
                    if event and edges[b] <= follow < edges[b + 1]:
                        total -= log_h[rows, b, k]
            rows += 1
    return total / (rows * (log_h.shape[2] - 1))


def test_tte_likelihood_is_the_piecewise_exponential_one(shards: Path, tte_batch) -> None:
    b, timelines, codes = tte_batch
    model = make_model(shards).train()
    vocab = len(codes) + 1
    obj = Objectives(ObjectiveConfig(tte_weight=1.0), model.d_model, num_codes=vocab)
    out = model(b)
    loss = obj.tte(out, b)
    rows = event_rows(out)
    assert len(rows.time) == sum(len(t.events) for t in timelines)  # one row per (person, event)
    f = obj.tte_proj(rows.context).view(len(rows.time), len(TTE_EDGES_DAYS), -1)
    log_h = (torch.einsum("ebr,kr->ebk", f, obj.tte_code.weight) + obj.tte_bias.weight.T[None]).detach().numpy()
    assert float(loss) == pytest.approx(_direct_nll(timelines, codes, log_h), rel=1e-4)
    # with the other objectives: every parameter gets a gradient
    losses = obj(model, b, torch.Generator().manual_seed(0))
    assert set(losses) == {"masked", "contrastive", "forecast", "tte", "loss"} and torch.isfinite(losses["tte"])
    losses["loss"].backward()
    params = list(model.named_parameters()) + list(obj.named_parameters())
    assert [n for n, p in params if p.grad is None] == []


def test_tte_learns_and_is_off_by_default(shards: Path, tte_batch) -> None:
    b, _, codes = tte_batch
    assert not hasattr(Objectives(ObjectiveConfig(), 32), "tte_proj")  # off: no head, no loss
    model = make_model(shards).train()
    obj = Objectives(
        ObjectiveConfig(tte_weight=1.0, masked_weight=0, contrastive_weight=0, forecast_weight=0),
        model.d_model,
        num_codes=len(codes) + 1,
    )
    opt = torch.optim.AdamW([*model.parameters(), *obj.parameters()], lr=3e-3)
    first = None
    for _ in range(40):
        loss = obj(model, b)["loss"]
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    # it fits the codes' timing: from the initial hazard (~0.05/yr for every code) to well below
    assert float(loss) < 0.7 * first, (first, float(loss))
