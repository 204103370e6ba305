"""The built-in synthetic cohort: tables, native files, determinism, ground truth, signal."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import av
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import wfdb

from datamodules.schema import MODALITIES, OmicsSpec
from datamodules.synthetic import STATE_NAMES, render_wearable, synthesize_cohort
from datamodules.synthetic.cli import main
from datamodules.synthetic.render import context
from datamodules.synthetic.render_ecg import (
    HOLTER_LEADS,
    HOLTER_RATE_HZ,
    LEADS_12,
    heart_rate,
    holter_heart_rate,
    resting_heart_rate,
)
from datamodules.synthetic.render_volume import MRI_SHAPE, MRI_SPACING_MM
from datamodules.synthetic.state import _SIGMA, FRAILTY, N_STATE, YEAR_DAYS, Recordings, simulate_subject

ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")
KNOBS = Recordings()  # the fixture's: the defaults
# the session fixture ``cohort`` (tests/conftest.py): 24 subjects, seed 7, workers 2


def _tables(root: Path) -> dict[str, pd.DataFrame]:
    return {
        name: pd.read_csv(root / f"{name}.csv", keep_default_na=True)
        for name in ("subjects", "events", "labels", "ground_truth", "states")
    }


def _files(events: pd.DataFrame, modality: str) -> list[str]:
    return events.loc[events.modality == modality, "path"].tolist()


def _checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _differences(a: Path, b: Path, ca: dict[str, str], cb: dict[str, str]) -> str:
    """Which files differ between two cohorts, and for a video whether its frames or only its encoding do."""
    lines = []
    for name in sorted(set(ca) | set(cb)):
        if ca.get(name) == cb.get(name):
            continue
        what = "missing on one side"
        if name in ca and name in cb and name.endswith(".mp4"):
            frames = [
                [f.to_ndarray(format="rgb24").tobytes() for f in av.open(str(r / name)).decode(video=0)] for r in (a, b)
            ]
            what = "same decoded frames: the encoding differs" if frames[0] == frames[1] else "the frames differ"
        lines.append(f"{name}: {what}")
    return "; ".join(lines)


def _corr(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(np.asarray(a, float), np.asarray(b, float))[0, 1])


def _visit_state(t: dict[str, pd.DataFrame], sid: str, time: str) -> pd.Series:
    st = t["states"]
    return st[(st.subject_id == sid) & (st.time == time)].iloc[0]


def _wearable(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return df.assign(timestamp=pd.to_datetime(df.timestamp))


def _is_holter(path: Path) -> bool:
    return wfdb.rdheader(str(path)[:-4]).fs == HOLTER_RATE_HZ


def _beats_per_minute(signal: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """R peaks of a lead (local maxima over 60% of the R height, >= 300 ms apart) -> their times (s) and the
    rate (bpm) after each."""
    lead = signal - np.median(signal)
    tall = lead[1:-1] > 0.6 * np.percentile(lead, 99.5)
    peaks = np.flatnonzero(tall & (lead[1:-1] >= lead[:-2]) & (lead[1:-1] > lead[2:])) + 1
    peaks = peaks[np.diff(peaks, prepend=-(10**9)) > 0.3 * fs]
    return peaks[1:] / fs, 60.0 * fs / np.diff(peaks)


def test_tables_have_the_contract_columns(cohort: Path) -> None:
    t = _tables(cohort)
    subj, ev, lab = t["subjects"], t["events"], t["labels"]
    assert list(subj.columns) == ["subject_id", "birth_date", "sex", "split", "consent"]
    assert list(ev.columns) == ["subject_id", "time", "modality", "path", "code", "numeric_value"]
    assert list(lab.columns) == ["subject_id", "name", "time", "value"]
    assert len(subj) == 24 and subj.subject_id.str.fullmatch(r"SYN-\d{6}").all()
    assert subj.sex.isin(["F", "M"]).all() and subj.split.isin(["train", "val", "test"]).all()
    assert subj.consent.dtype == bool and (~subj.consent).sum() >= 1  # a withdrawn subject
    assert set(subj.split) == {"train", "val", "test"}
    first_age = t["ground_truth"].age_at_first_visit
    assert pd.to_datetime(subj.birth_date, format="%Y-%m-%d").notna().all()
    assert first_age.between(40, 81).all()
    assert ev.time.str.match(ISO_TIME).all() and lab.time.str.match(ISO_TIME).all()
    assert ev[["subject_id", "time"]].apply(tuple, axis=1).is_monotonic_increasing
    clinical = ev.modality == "clinical"
    assert ev.loc[clinical, "path"].isna().all() and ev.loc[~clinical, "path"].notna().all()
    assert ev.loc[clinical, "code"].notna().all() and ev.loc[~clinical, "code"].isna().all()
    assert ev.loc[~clinical, "numeric_value"].isna().all()
    assert ev.loc[ev.code == "LOINC:2345-7", "numeric_value"].between(40, 400).all()
    assert set(ev.modality) == set(MODALITIES)
    assert all((cohort / p).is_file() for p in ev.path.dropna())
    meta = json.loads((cohort / "cohort.json").read_text())
    assert meta["seed"] == 7 and meta["n_subjects"] == 24
    assert meta["counts"] == {m: int((ev.modality == m).sum()) for m in MODALITIES}
    assert set(meta["specs"]) == set(MODALITIES) and "render" in meta


def test_mri_files_are_nifti_off_the_canonical_grid(cohort: Path) -> None:
    for rel in _files(_tables(cohort)["events"], "mri"):
        img = nib.load(cohort / rel)
        assert img.shape == MRI_SHAPE and np.allclose(img.header.get_zooms(), MRI_SPACING_MM)
        assert "".join(nib.aff2axcodes(img.affine)) in {"LAS", "LPS"}
        assert np.asanyarray(img.dataobj).dtype == np.int16


def test_ecg_files_are_wfdb_records(cohort: Path) -> None:
    lead_sets, holters = set(), []
    ecgs = _files(_tables(cohort)["events"], "ecg")
    for rel in ecgs:
        assert rel.endswith(".hea") and (cohort / rel).with_suffix(".dat").is_file()
        rec = wfdb.rdrecord(str(cohort / rel)[:-4])
        assert set(rec.units) == {"mV"} and np.isfinite(rec.p_signal).all() and np.abs(rec.p_signal).max() < 10
        if rec.fs == HOLTER_RATE_HZ:  # a Holter: 2 or 3 leads, 12-bit, holter_minutes long
            assert rec.sig_len == HOLTER_RATE_HZ * KNOBS.holter_minutes * 60 and tuple(rec.sig_name) in HOLTER_LEADS
            assert rec.fmt == ["212"] * rec.n_sig
            holters.append(rec)
            continue
        assert rec.fs == 500 and rec.sig_len == 5000
        assert set(rec.sig_name) <= set(LEADS_12) and rec.fmt == ["16"] * rec.n_sig
        lead_sets.add(len(rec.sig_name))
    assert 12 in lead_sets and len(lead_sets) > 1  # some records miss leads
    # a share of the ECG visits record a Holter (6 of the fixture's 47, holter_share = 12%)
    assert 0.4 * KNOBS.holter_share <= len(holters) / len(ecgs) <= 2.0 * KNOBS.holter_share
    assert {r.n_sig for r in holters} == {2, 3}
    for rec in holters:  # a plausible rhythm all through: a beat every 0.3-1.6 s, the last one near the end
        times, bpm = _beats_per_minute(rec.p_signal[:, 0], rec.fs)
        assert times[-1] > rec.sig_len / rec.fs - 3.0 and 38 <= bpm.min() and bpm.max() <= 190


def test_holter_heart_rate_follows_its_rhythm_and_the_state(cohort: Path) -> None:
    """The beats of a Holter come at the model's momentary rate (resting rate of the state, daily rhythm, bouts
    of activity): minute by minute, the rate measured from the record tracks the rate the renderer drew."""
    ev = _tables(cohort)["events"]
    tracked = 0
    for row in ev[ev.modality == "ecg"].itertuples():
        if not _is_holter(cohort / row.path):
            continue
        index = int(row.subject_id.split("-")[1])
        subject = simulate_subject(7, index)
        ctx = context(7, subject, int(Path(row.path).name[1:3]), "ecg", cohort / "again")
        ctx.rng.random()  # the draw of the lead set, as in render_ecg
        hr = heart_rate(ctx)
        grid, model = holter_heart_rate(ctx, hr, KNOBS.holter_minutes * 60.0)
        rec = wfdb.rdrecord(str(cohort / row.path)[:-4], channel_names=["MLII"])
        times, bpm = _beats_per_minute(rec.p_signal[:, 0], rec.fs)
        minute = (times // 60).astype(int)
        measured = pd.Series(bpm).groupby(minute).mean()
        expected = pd.Series(np.interp(times, grid, model)).groupby(minute).mean()
        assert np.abs(measured - expected).max() < 4.0, (row.path, measured.round(1).tolist())
        # at rest most of the time, around the state's resting rate
        assert abs(np.median(bpm) - resting_heart_rate(ctx.visit.state)) < 12.0
        if expected.std() > 3.0:  # bouts of activity: the record follows them
            assert _corr(measured.tolist(), expected.tolist()) > 0.9
            tracked += 1
    assert tracked >= 2


def test_audio_and_video_files_open(cohort: Path) -> None:
    ev = _tables(cohort)["events"]
    for rel in _files(ev, "voice"):
        info = sf.info(str(cohort / rel))
        assert info.format == "FLAC" and info.samplerate == 22050 and info.channels == 1
        assert 2.0 <= info.duration <= 4.0
    rates = set()
    for rel in _files(ev, "breath"):
        info = sf.info(str(cohort / rel))
        assert info.format == "FLAC" and 3.0 <= info.duration <= 4.0
        rates.add((info.samplerate, info.channels))
    assert rates <= {(16000, 1), (44100, 2)}
    for modality, size, fps in (("gait", (96, 128), 25), ("face", (96, 96), 30)):
        for rel in _files(ev, modality)[:6]:
            with av.open(str(cohort / rel)) as container:
                stream = container.streams.video[0]
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            assert stream.codec_context.name in {"h264", "mpeg4"} and float(stream.average_rate) == fps
            assert frames[0].shape == (*size, 3) and 50 <= len(frames) <= 75


def test_wearable_and_omics_tables(cohort: Path) -> None:
    t = _tables(cohort)
    ev = t["events"]
    kinds, spans = set(), []
    for _, row in ev[ev.modality == "wearable"].iterrows():
        path = cohort / row.path
        kinds.add(path.suffix)
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        assert list(df.columns) == ["timestamp", "heart_rate", "steps", "skin_temp"]
        if path.suffix == ".csv":
            assert df.timestamp.str.match(ISO_TIME).all()
        ts = pd.to_datetime(df.timestamp)
        gaps = ts.diff().dt.total_seconds().dropna()
        spans.append((ts.iloc[-1] - ts.iloc[0]).total_seconds() / 86400)
        assert ts.is_monotonic_increasing and gaps.min() >= 19 and spans[-1] <= 3 * KNOBS.wear_days
        assert 0 <= (ts.iloc[0] - pd.Timestamp(row.time)).total_seconds() < 3 * 3600
        assert len(df) < 1500 * spans[-1] + 1500  # ~1230 samples a day worn, fewer with the gaps
        assert df.heart_rate.dropna().between(25, 230).all()
    assert kinds == {".csv", ".parquet"}
    # wear periods of several days around the default, some longer, some shorter
    assert 0.6 * KNOBS.wear_days <= np.median(spans) <= 1.2 * KNOBS.wear_days
    assert min(spans) < 0.6 * KNOBS.wear_days and max(spans) > 1.3 * KNOBS.wear_days
    panel = OmicsSpec().features
    kinds = set()
    for rel in _files(ev, "omics"):
        path = cohort / rel
        kinds.add(path.suffix)
        if path.suffix == ".npy":
            vec = np.load(path)
            assert vec.shape == (len(panel),) and vec.dtype == np.float32 and np.isfinite(vec).any()
            continue
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        assert list(df.columns) == ["feature_id", "value"] and df.feature_id.isin(panel).mean() > 0.9
        snps = df[df.feature_id.str.startswith("rs") & df.feature_id.isin(panel)]
        assert snps.value.isin([0, 1, 2]).all()
    assert kinds == {".csv", ".parquet", ".npy"}


def test_wearables_follow_the_daily_rhythm_and_the_hidden_state(cohort: Path) -> None:
    """Each wear period spans days, with nights asleep (heart rate down, no steps) and not every day worn;
    across people, activity and heart rate over the period follow frailty and the cardio state."""
    t = _tables(cohort)
    ev = t["events"]
    steps, frailty, hr, cardio, dips, night_steps, left_out = [], [], [], [], [], [], 0
    for row in ev[ev.modality == "wearable"].itertuples():
        df = _wearable(cohort / row.path)
        hour = df.timestamp.dt.hour
        night, day = (hour >= 1) & (hour < 4), (hour >= 10) & (hour < 19)
        days = df.timestamp.dt.normalize()
        span = (days.iloc[-1] - days.iloc[0]).days + 1
        assert span >= 2 and df.timestamp.dt.date.nunique() >= min(span - 2, 0.7 * span)
        left_out += span - days.nunique()  # calendar days inside the period without a sample
        dips.append(df.heart_rate[day].mean() - df.heart_rate[night].mean())
        night_steps.append(df.steps[night].mean() / df.steps[day].mean())
        minutes = df.timestamp.dt.floor("min").nunique()
        steps.append(np.log(df.steps.sum() / minutes * 1440))  # steps per day worn
        hr.append(df.heart_rate.mean())
        state = _visit_state(t, row.subject_id, row.time)
        frailty.append(state.frailty)
        cardio.append(state.cardio)
    assert min(dips) > 5.0 and np.median(dips) > 10.0  # 7 bpm asleep, more when active by day
    assert np.median(night_steps) < 0.01 and max(night_steps) < 0.5  # asleep (a few early risers)
    assert left_out >= 1  # a day now and then not worn
    assert len(steps) >= 40 and _corr(steps, frailty) < -0.6  # measured: -0.86 (54 wear periods)
    assert _corr(hr, cardio) > 0.7  # measured: 0.91


def test_the_state_is_a_continuous_path_through_the_visits(cohort: Path) -> None:
    """Between the simulator's grid points the hidden state is a Brownian bridge of its own diffusion: pinned to
    the visit states (states.csv), the same path for every renderer, with the bridge's spread in between."""
    states = _tables(cohort)["states"]
    subject = simulate_subject(7, 0)
    mine = states[states.subject_id == subject.subject_id]
    at_visits = subject.state_at(np.array([v.days for v in subject.visits]))
    assert np.array_equal(at_visits, np.array([v.state for v in subject.visits]))  # exactly
    assert np.allclose(at_visits, mine[list(STATE_NAMES)].to_numpy(), rtol=1e-8, atol=1e-9)  # states.csv: 10 digits
    days = np.linspace(0.0, subject.end_days + 30.0, 4000)
    path = subject.state_at(days)
    assert np.array_equal(path[::7], subject.state_at(days[::7]))  # the same path whatever is asked
    assert np.abs(np.diff(path, axis=0)).max() < 0.1  # continuous (steps of ~0.3 days)
    # spread at the middle of a grid step, over many people: sigma^2 * step / 4 around linear interpolation
    ratio = []
    for i in range(200):
        s = simulate_subject(11, i)
        gap = np.diff(s.grid_days)
        k = int(np.argmax(gap > 20.0))
        mid = s.grid_days[k] + gap[k] / 2
        linear = (s.grid_states[k] + s.grid_states[k + 1]) / 2
        ratio.append((s.state_at(np.array([mid]))[0] - linear) ** 2 / (_SIGMA**2 * gap[k] / YEAR_DAYS / 4))
    assert 0.85 < np.mean(ratio) < 1.15 and len(ratio) * N_STATE == 1200  # chi-square(1) mean, 1200 draws


def test_a_wear_period_follows_the_state_as_it_drifts(tmp_path: Path) -> None:
    """Over a few days the state hardly moves (0.22 per sqrt(year)); made to worsen quickly (frailty + 3 over
    the period), the same person's steps fall day by day against the same wear period on a flat path."""
    subject = simulate_subject(7, 1)
    visit = next(v for v in subject.visits if "wearable" in v.modalities)
    daily = {}
    for rise in (0.0, 3.0):
        end = visit.state + rise * np.eye(N_STATE)[FRAILTY]
        subject.grid_days = np.array([visit.days, visit.days + 8.0])
        subject.grid_states = np.stack([visit.state, end])
        df = render_wearable.wearable_frame(context(7, subject, visit.index, "wearable", tmp_path))
        df = df.assign(timestamp=pd.to_datetime(df.timestamp))
        day = (df.timestamp - df.timestamp.iloc[0]).dt.days
        daily[rise] = df.steps.astype(float).groupby(day).sum()
    ratio = np.log(daily[3.0] / daily[0.0]).to_numpy()[:-1]  # the same draws: only the state differs
    assert len(ratio) >= 4 and np.all(np.diff(ratio) < 0.05) and ratio[-1] < -0.5
    assert _corr(list(range(len(ratio))), ratio.tolist()) < -0.95


def test_ground_truth_and_labels_agree(cohort: Path) -> None:
    t = _tables(cohort)
    gt, lab, ev = t["ground_truth"], t["labels"], t["events"]
    assert {"prs", "onset_days", "end_days"} <= set(gt.columns)
    assert {f"drift_{n}" for n in STATE_NAMES} <= set(gt.columns)
    assert set(STATE_NAMES) <= set(t["states"].columns)
    cases = gt[gt.onset_days.notna()]
    assert ((cases.onset_days > 0) & (cases.onset_days <= cases.end_days)).all()
    disease = lab[lab.name == "disease"].set_index("subject_id")
    first = t["states"].groupby("subject_id").time.min()
    for _, g in gt.iterrows():
        row = disease.loc[g.subject_id]
        days = (pd.Timestamp(row.time) - pd.Timestamp(first[g.subject_id])).total_seconds() / 86400
        expected = g.onset_days if g.disease else g.end_days
        assert row.value == g.disease and abs(days - expected) < 1e-4
        dx = ev[(ev.subject_id == g.subject_id) & (ev.code == "ICD10:G30")]
        assert len(dx) == g.disease  # coded once, for cases only
        if g.disease:
            assert pd.Timestamp(dx.time.iloc[0]) >= pd.Timestamp(row.time)


def test_disease_rate_is_plausible() -> None:
    subjects = [simulate_subject(0, i) for i in range(300)]
    rate = np.mean([s.onset_days == s.onset_days for s in subjects])
    assert 0.2 <= rate <= 0.42
    # the disease is predictable from the state before onset
    x0 = np.array([s.visits[0].state for s in subjects])
    y = np.array([s.onset_days == s.onset_days for s in subjects], float)
    assert _corr(x0[:, STATE_NAMES.index("neuro")].tolist(), y.tolist()) > 0.2


def test_modalities_carry_the_hidden_state(cohort: Path) -> None:
    t = _tables(cohort)
    ev = t["events"]
    vent, neuro = [], []
    for _, row in ev[ev.modality == "mri"].iterrows():
        data = np.asanyarray(nib.load(cohort / row.path).dataobj).astype(float)
        core = data[8:32, 10:38, 8:32]  # inside the brain
        vent.append(float((core < 350).sum()))
        neuro.append(_visit_state(t, row.subject_id, row.time).neuro)
    assert len(vent) >= 5 and _corr(vent, neuro) > 0.6
    rate, cardio = [], []
    for _, row in ev[ev.modality == "ecg"].iterrows():
        if _is_holter(cohort / row.path):
            continue  # test_holter_heart_rate_follows_its_rhythm_and_the_state
        rec = wfdb.rdrecord(str(cohort / row.path)[:-4], channel_names=["II"])
        lead = rec.p_signal[:, 0] - np.median(rec.p_signal[:, 0])
        peaks = np.flatnonzero((lead[1:-1] > 0.5) & (lead[1:-1] >= lead[:-2]) & (lead[1:-1] > lead[2:]))
        beats = np.count_nonzero(np.diff(peaks, prepend=-1000) > 125)  # >= 250 ms apart
        rate.append(beats * 6.0)
        cardio.append(_visit_state(t, row.subject_id, row.time).cardio)
    assert len(rate) >= 10 and _corr(rate, cardio) > 0.5


def test_same_seed_same_bytes_any_workers(tmp_path: Path) -> None:
    a = synthesize_cohort(tmp_path / "a", n_subjects=4, seed=3, workers=2)
    b = synthesize_cohort(tmp_path / "b", n_subjects=4, seed=3, workers=1)
    c = synthesize_cohort(tmp_path / "c", n_subjects=2, seed=4, workers=1)
    ca, cb, cc = _checksums(a.out_dir), _checksums(b.out_dir), _checksums(c.out_dir)
    assert ca == cb, _differences(a.out_dir, b.out_dir, ca, cb)
    assert set(MODALITIES) == {m for m, n in a.counts.items() if n > 0}  # coverage is forced
    assert ca["subjects.csv"] != cc["subjects.csv"] and ca["events.csv"] != cc["events.csv"]
    common = set(ca) & set(cc)
    assert all(ca[k] != cc[k] for k in common if k.startswith("files/") and not k.endswith(".hea"))


def test_the_knobs_of_long_recordings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Wear period, Holter share and length from the command line: only those files change, cohort.json says."""
    out = tmp_path / "knobs"
    args = ["--out", str(out), "--subjects", "3", "--seed", "3", "--workers", "1", "--modalities", "ecg", "wearable"]
    assert main([*args, "--wear-days", "2", "--holter-share", "1", "--holter-minutes", "0.5"]) == 0
    ev = pd.read_csv(out / "events.csv")
    assert set(ev.modality) == {"ecg", "wearable"}
    for rel in _files(ev, "ecg"):
        rec = wfdb.rdheader(str(out / rel)[:-4])
        assert rec.fs == HOLTER_RATE_HZ and rec.sig_len == HOLTER_RATE_HZ * 30
    for rel in _files(ev, "wearable"):
        ts = _wearable(out / rel).timestamp
        assert 2 / 3 - 0.1 < (ts.iloc[-1] - ts.iloc[0]).total_seconds() / 86400 <= 6
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["render"]["recordings"] == {"wear_days": 2.0, "holter_share": 1.0, "holter_minutes": 0.5}
    default = synthesize_cohort(tmp_path / "default", n_subjects=3, seed=3, workers=1, modalities=["ecg", "wearable"])
    assert pd.read_csv(default.path("events.csv")).equals(ev)  # the same visits, other files
    assert main([*args, "--overwrite", "--holter-share", "1.5"]) == 1
    assert "holter_share must be in [0, 1]" in capsys.readouterr().err


def test_cli_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth"
    assert main(["--out", str(out), "--subjects", "1", "--workers", "1", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "1 subject " in printed and "mri=" in printed
    assert main(["--out", str(out), "--subjects", "1", "--workers", "1"]) == 1
    assert "not empty" in capsys.readouterr().err
    (out / "files" / "stale.txt").write_text("old")
    assert main(["--out", str(out), "--subjects", "1", "--workers", "1", "--overwrite"]) == 0
    assert not (out / "files" / "stale.txt").exists()
    with pytest.raises(FileExistsError):
        synthesize_cohort(out, n_subjects=1)


def test_a_cohort_of_some_modalities_is_the_full_cohort_seen_through_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cardiology clinic's view (clinical, ECG, wearables): the same people, labels and files as the full
    cohort of the seed, and nothing else measured."""
    full = synthesize_cohort(tmp_path / "full", n_subjects=6, seed=3, workers=1)
    assert (
        main(
            [
                "--out",
                str(tmp_path / "some"),
                "--subjects",
                "6",
                "--seed",
                "3",
                "--workers",
                "1",
                "--modalities",
                "clinical",
                "ecg",
                "wearable",
            ]
        )
        == 0
    )
    ca, cs = _checksums(full.out_dir), _checksums(tmp_path / "some")
    for name in ("subjects.csv", "labels.csv", "ground_truth.csv", "states.csv"):
        assert cs[name] == ca[name], name
    kept = {k for k in ca if k.startswith("files/") and ("_ecg." in k or "_wearable." in k)}
    assert kept and {k for k in cs if k.startswith("files/")} == kept
    assert all(cs[k] == ca[k] for k in kept)
    ev_full, ev_some = (pd.read_csv(p / "events.csv") for p in (full.out_dir, tmp_path / "some"))
    assert set(ev_some.modality) == {"clinical", "ecg", "wearable"}
    pd.testing.assert_frame_equal(
        ev_some.reset_index(drop=True),
        ev_full[ev_full.modality.isin(["clinical", "ecg", "wearable"])].reset_index(drop=True),
    )
    assert json.loads((tmp_path / "some" / "cohort.json").read_text())["modalities"] == ["clinical", "ecg", "wearable"]
    assert main(["--out", str(tmp_path / "bad"), "--subjects", "2", "--modalities", "ecg", "eeg"]) == 1
    assert "['eeg']; choose from" in capsys.readouterr().err
