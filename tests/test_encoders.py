"""Encoders: every registered encoder against the contract (shapes, dtype, gradients, meta-device
build, state-dict round trip, masks, empty batches), the registry, and the layouts datamodules collates."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from datamodules.modalities import registry
from encoders import Encoder, build_encoder, encoder_modalities, list_encoders

# Small layouts (by layout kind: a modality's declared spec says which), and small trunks for the large
# variants, so the file runs in well under a minute on two CPU cores; each final feature grid keeps > 1
# position. Default layouts and full-size trunks are exercised at the end (full-size trunks: `slow`).
SMALL_BY_KIND: dict[str, dict] = {
    "volume": dict(size=[32, 32, 32]),
    "waveform": dict(samples=500),
    "audio": dict(max_samples=4000),
    "video": dict(frames=4, size=[32, 32]),
    "timeseries": dict(minutes=240),
    "vector": dict(features=16),
    "event": dict(vocab_size=50),
}
SMALL: dict[str, dict] = {m: SMALL_BY_KIND[d.spec.kind] for m, d in registry().items()}
VARIANT: dict[str, dict] = {
    "resnet": dict(size=[32, 16, 16], widen_factor=0.25),
    "r3d18": dict(frames=2, stages=2),
    "ast": dict(max_samples=8000, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
}
NAMES = list_encoders()


def small_kwargs(name: str) -> dict:
    modality, variant = name.split("/")
    kw = {**SMALL[modality], **VARIANT.get(variant, {}), "d_model": 32, "num_tokens": 3}
    return json.loads(json.dumps(kw))  # as a checkpoint's config gives them back: lists, not tuples


def build(name: str, seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return build_encoder(name, **small_kwargs(name))


@functools.cache
def shared(name: str) -> Encoder:
    """One instance per encoder for the tests that only read its weights (building the large
    variants costs seconds). Tests may run it in train mode (BatchNorm statistics move) but must leave
    no gradients behind."""
    return build(name)


@pytest.fixture(scope="module", autouse=True)
def _free_shared_encoders() -> Iterator[None]:
    yield
    shared.cache_clear()


def meta_build(name: str) -> Encoder:
    """Built on the meta device, then materialised on the CPU holding NaN (or 7) everywhere."""
    with torch.device("meta"):
        enc = build_encoder(name, **small_kwargs(name))
    assert all(t.is_meta for t in [*enc.parameters(), *enc.buffers()])
    enc.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*enc.parameters(), *enc.buffers()]:
            t.fill_(float("nan") if t.is_floating_point() else 7)
    return enc


def mask_view(enc: Encoder, shape: tuple[int, ...]) -> list[int]:
    """Shape that broadcasts the encoder's mask over ``data``."""
    return [shape[i] if i in enc.mask_axes else 1 for i in range(len(shape))]


def make_inputs(enc: Encoder, n: int = 3, seed: int = 0) -> dict[str, torch.Tensor | None]:
    """Collated-style inputs: masked entries are zero, variable-length axes padded at the end, the
    first instance fully observed, the last (when n >= 3) fully masked."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, *enc.in_shape)
    if enc.in_dtype == torch.uint8:
        data = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    elif enc.in_dtype == torch.long:
        data = torch.randint(0, enc.vocab_size, shape, generator=g)
    else:
        data = torch.randn(shape, generator=g)
    out: dict[str, torch.Tensor | None] = {"data": data, "mask": None, "value": None}
    if enc.modality == "clinical":
        out["value"] = torch.randn(n, generator=g)
    if enc.mask_axes is None:
        return out
    mshape = [shape[a] for a in enc.mask_axes]
    if enc.variable_axes:
        length = shape[1 + enc.variable_axes[0]]
        lengths = torch.linspace(length, max(1, length // 3), n).long()
        mask = torch.arange(length)[None, :] < lengths[:, None]
        mask = mask.view(mshape)
    else:
        mask = torch.rand(mshape, generator=g) < 0.6
    if n:
        mask[0] = True
    if n >= 3:
        mask[-1] = False
    out["mask"] = mask
    if enc.modality == "clinical":
        out["value"] = torch.where(mask, out["value"], 0.0)
    else:
        out["data"] = torch.where(mask.view(mask_view(enc, shape)), data, torch.zeros((), dtype=data.dtype))
    return out


def scramble(enc: Encoder, inputs: dict, seed: int = 1) -> dict:
    """The same inputs with random values (and NaN/Inf for float data) at every masked-out position."""
    g = torch.Generator().manual_seed(seed)
    key = "value" if enc.modality == "clinical" else "data"
    x = inputs[key]
    if x.dtype == torch.uint8:
        noise = torch.randint(0, 256, x.shape, generator=g, dtype=torch.uint8)
    else:
        noise = torch.randn(x.shape, generator=g) * 100
        noise.view(-1)[::7] = float("nan")
        noise.view(-1)[::11] = float("inf")
    mask = inputs["mask"]
    keep = mask if key == "value" else mask.view(mask_view(enc, tuple(x.shape)))
    return {**inputs, key: torch.where(keep, x, noise)}


# -- registry -----------------------------------------------------------------------------------------


def test_registry_names_are_modality_slash_variant_and_agree_with_datamodules() -> None:
    declared = registry()
    assert set(encoder_modalities()) == set(declared)  # an encoder for every declared modality, and no other
    for name in NAMES:
        modality, variant = name.split("/")
        assert modality in declared and variant
        with torch.device("meta"):
            enc = build_encoder(name)
        assert (enc.modality, enc.name) == (modality, name)
        assert name in list_encoders(modality)


def test_unknown_encoder_or_argument_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown encoder 'nope/x'.*ecg/conv1d.*wearable/conv1d"):
        build_encoder("nope/x")
    with pytest.raises(TypeError, match="ecg/conv1d.*leads"):
        build_encoder("ecg/conv1d", lead=12)
    with pytest.raises(ValueError, match="no encoder is registered for modality 'eeg'"):
        list_encoders("eeg")
    with pytest.raises(ValueError, match="must be 'modality/variant'"):
        build_encoder.__globals__["register"]("ECG-conv")


def test_every_modality_has_a_small_default_encoder() -> None:
    for modality, decl in registry().items():
        name = decl.default_encoder
        assert name in list_encoders(modality)
        with torch.device("meta"):
            enc = build_encoder(name)
        assert enc.d_model == 128 and 1 <= enc.num_tokens <= 4
        assert sum(p.numel() for p in enc.parameters()) < 500_000, name


def test_wrong_layout_names_the_encoder_and_the_expected_shape() -> None:
    enc = shared("ecg/conv1d")
    with pytest.raises(ValueError, match=r"'ecg/conv1d' expects data \[N, 12, 500\]"):
        enc(torch.zeros(2, 8, 500))
    with pytest.raises(ValueError, match=r"mask \[2, 12\]"):
        enc(torch.zeros(2, 12, 500), torch.ones(2, 500, dtype=torch.bool))


def test_init_weights_refuses_a_parameter_it_cannot_reach() -> None:
    class Scaled(Encoder):  # a parameter held directly, with no reset_parameters() to reach it
        def __init__(self) -> None:
            super().__init__(d_model=4, num_tokens=1)
            self.scale = nn.Parameter(torch.ones(4))

        def encode(self, data, mask, value):
            return data[:, None] * self.scale

    with pytest.raises(TypeError, match="override _init_module"):
        Scaled().init_weights()


# -- every registered encoder ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_tokens_shape_dtype_and_gradients_reach_every_parameter(name: str) -> None:
    enc = shared(name).train()
    try:
        out = enc(**make_inputs(enc))
        assert out.shape == (3, 3, 32) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        out.sum().backward()
        for pname, p in enc.named_parameters():
            assert p.grad is not None, f"{name}: no gradient for {pname}"
            assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"
    finally:
        enc.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", [n for n in NAMES if n.split("/")[0] in ("mri", "voice", "breath")])
def test_float16_input_as_the_loader_sends_it_gives_the_tokens_of_its_float32_values(name: str) -> None:
    enc = shared(name).eval()
    inputs = make_inputs(enc)
    half = inputs["data"].to(torch.float16)
    with torch.no_grad():
        out = enc(**{**inputs, "data": half})
        torch.testing.assert_close(out, enc(**{**inputs, "data": half.float()}), rtol=0, atol=0)
    assert out.dtype == torch.float32


NAN_MISSING = [n for n in NAMES if n.split("/")[0] in ("ecg", "wearable", "omics")]


@pytest.mark.parametrize("name", NAN_MISSING)
def test_nan_where_missing_as_the_loader_sends_it_gives_the_tokens_of_zeros_and_a_mask(name: str) -> None:
    enc = shared(name).eval()
    inputs = make_inputs(enc, n=4)
    mask = inputs["mask"]
    with_nan = torch.where(mask.view(mask_view(enc, inputs["data"].shape)), inputs["data"], torch.nan)
    with_nan[1].view(-1)[0] = torch.nan  # a value missing inside an observed lead / stream / panel
    explicit = torch.where(torch.isnan(with_nan), 0.0, with_nan)
    finite = torch.isfinite(with_nan)
    mask = finite.any(-1) if name.startswith("ecg") else finite  # a lead is observed where it has a finite sample
    assert not mask[-1].any() and not torch.isfinite(with_nan[1]).all()
    with torch.no_grad():
        out = enc(with_nan, None)
        torch.testing.assert_close(out, enc(explicit, mask), rtol=0, atol=0)
    assert torch.isfinite(out).all()
    nothing_missing = inputs["data"].clone()
    with torch.no_grad():  # no NaN, no mask: all observed
        torch.testing.assert_close(enc(nothing_missing, None), enc(nothing_missing, torch.ones_like(mask)))


@pytest.mark.parametrize("name", NAMES)
def test_meta_build_then_to_empty_and_init_weights_matches_a_normal_build(name: str) -> None:
    ref = build(name, seed=3)
    torch.manual_seed(3)
    enc = meta_build(name)  # meta build consumes no randomness; its buffers and weights hold garbage
    enc.init_weights()
    for (n1, a), (n2, b) in zip(
        [*ref.named_parameters(), *ref.named_buffers()], [*enc.named_parameters(), *enc.named_buffers()], strict=True
    ):
        assert n1 == n2 and torch.equal(a, b), f"{name}: {n1} differs"
    inputs = make_inputs(enc)
    with torch.no_grad():
        out = enc.eval()(**inputs)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, ref.eval()(**inputs), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_gives_the_same_tokens(name: str) -> None:
    a = shared(name)
    inputs = make_inputs(a)
    with torch.no_grad():
        a.train()(**inputs)  # move BatchNorm running statistics (where there are any) off their initial values
    b = meta_build(name)  # NaN everywhere: the state dict must carry all the forward reads
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(b.eval()(**inputs), a.eval()(**inputs), rtol=0, atol=0)


def _has_mask(name: str) -> bool:
    with torch.device("meta"):
        return build_encoder(name).mask_axes is not None


@pytest.mark.parametrize("name", [n for n in NAMES if _has_mask(n)])
def test_tokens_do_not_depend_on_masked_out_values(name: str) -> None:
    enc = shared(name).train()  # batch statistics (BatchNorm) must not carry masked values either
    inputs = make_inputs(enc)
    with torch.no_grad():
        out, out2 = enc(**inputs), enc(**scramble(enc, inputs))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out2, out, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sharded", [False, True])
def test_empty_batch_gives_empty_tokens_and_zero_gradients(name: str, sharded: bool) -> None:
    """Every parameter takes part with a zero gradient (DDP, ZeRO and FSDP wait for all of them). Sharded
    (ZeRO-3 marks its partitioned parameters with ``ds_id``; FSDP2 makes the encoder an FSDPModule): every
    module holding weights runs, as on data, so processes with and without the modality gather the same
    weights (tests/test_distributed.py, ZeRO-3). Not sharded: no module runs (no encoder compute)."""
    enc = shared(name).train()
    if sharded:
        for i, p in enumerate(enc.parameters()):
            p.ds_id = i
    holders = {m for m in enc.modules() if any(True for _ in m.parameters(recurse=False))}
    ran: set[nn.Module] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, args: ran.add(mod)) for m in holders]
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    try:
        assert enc.sharded() == sharded
        out = enc(**make_inputs(enc, n=0))
        assert out.shape == (0, 3, 32) and out.dtype == torch.float32
        assert ran == (holders if sharded else set())
        assert all(m.training for m in enc.modules())  # train mode back; no BatchNorm statistics moved
        assert all(torch.equal(v, state[k]) for k, v in enc.state_dict().items())
        out.sum().backward()
        assert all(p.grad is not None and not p.grad.any() for p in enc.parameters())
    finally:
        for h in hooks:
            h.remove()
        for p in enc.parameters():
            if hasattr(p, "ds_id"):
                del p.ds_id
        enc.zero_grad(set_to_none=True)


# -- the layouts datamodules collates, at the schema defaults -----------------------------------------


def test_default_encoders_read_collated_batches_at_the_schema_default_layouts() -> None:
    from datamodules.collate import Collator
    from datamodules.schema import Event, Measurement, Timeline, default_specs

    specs, rng = default_specs(), np.random.default_rng(0)

    def canonical(modality: str, i: int) -> np.ndarray:
        shape = list(specs[modality].shape())
        ax = specs[modality].variable_axis
        if ax is not None:
            shape[ax] = shape[ax] // (i + 1)  # shorter recordings get padded by the collator
        a = (
            rng.integers(0, 256, shape, dtype=np.uint8)
            if specs[modality].dtype == "uint8"
            else rng.standard_normal(shape).astype(np.float32)
        )
        if specs[modality].nan_is_missing and i == 1:
            a[0] = np.nan  # a missing lead / stream / feature
        return a

    timelines = [
        Timeline(
            key=f"k{i}",
            events=[
                Event(
                    0.0,
                    9000.0,
                    [
                        *(Measurement(m, canonical(m, i)) for m, d in registry().items() if d.has_files),
                        Measurement("clinical", code="LAB:glucose", value=5.4 if i else float("nan")),
                        Measurement("clinical", code="DX:never-seen"),
                    ],
                )
            ],
        )
        for i in range(2)
    ]
    collator = Collator(specs, clinical_codes=["LAB:glucose", "DX:E11"])
    batch = collator(timelines)
    assert set(batch.modalities) == set(registry())
    for modality, mb in batch.modalities.items():
        # the layout the data side declares is what the encoder is built for (Spec.encoder_layout)
        kwargs = specs[modality].encoder_layout(vocab_size=collator.vocab_size)
        enc = build_encoder(registry()[modality].default_encoder, **kwargs).eval()
        with torch.no_grad():
            out = enc(mb.data, mb.mask, mb.value)
        assert out.shape == (len(mb), enc.num_tokens, enc.d_model), modality
        assert torch.isfinite(out).all(), modality


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mri/resnet", "gait/r3d18", "voice/ast"])
def test_large_variants_at_full_size_and_default_layouts(name: str) -> None:
    enc = build_encoder(name).train()
    out = enc(**make_inputs(enc, n=2))
    assert out.shape == (2, enc.num_tokens, enc.d_model) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
