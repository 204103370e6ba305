"""The baseline every fine-tuned model must beat: logistic regression on the last visit's summary features.

``last_visit_features`` turns a history into one fixed-length vector from its most recent event (the
visit at the landmark) plus age: per modality, simple summaries of the canonical array (channel means
and standard deviations; the omics panel itself; clinical code indicators and lab values), zeros and a
missing-indicator when the modality was not measured at that visit. This is what a clinical team would
fit first; :func:`fit_logistic` does it with cross-validated L2 strength (scikit-learn).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from datamodules.schema import MODALITIES, Spec, Timeline


def _summary(modality: str, data: np.ndarray, spec: Spec) -> np.ndarray:
    x = np.asarray(data, dtype=np.float64)
    if spec.kind == "vector":  # omics panel: the values themselves
        return x.reshape(-1)
    if spec.kind in ("waveform", "timeseries"):  # per channel mean and std over time (0 for a channel not worn)
        seen = np.isfinite(x).any(-1)
        x = np.where(seen[:, None], x, 0.0)
        return np.concatenate([np.nanmean(x, -1), np.nanstd(x, -1)])
    if spec.kind == "video":  # per colour channel mean and std, and frame count
        x = x.astype(np.float64) / 255.0
        return np.array([*x.mean((0, 2, 3)), *x.std((0, 2, 3)), len(x)])
    flat = x[np.isfinite(x)]  # volume, audio: mean, std, quantiles, length
    if flat.size == 0:
        return np.zeros(6)
    return np.array([flat.mean(), flat.std(), *np.quantile(flat, [0.1, 0.5, 0.9]), flat.size])


class LastVisitFeatures:
    """Fixed-length features of a history's last event: ``[age_years, (present, summary...) per modality]``."""

    def __init__(self, specs: dict[str, Spec], clinical_codes: Sequence[str]) -> None:
        self.specs, self.codes = specs, list(clinical_codes)
        self.code_pos = {c: i for i, c in enumerate(self.codes)}
        self.modalities = [m for m in MODALITIES if m in specs]

    def _block(self, modality: str, items: list) -> np.ndarray:
        if modality == "clinical":
            out = np.zeros(2 * len(self.codes))
            for m in items:
                i = self.code_pos.get(m.code)
                if i is not None:
                    out[i] = 1.0
                    out[len(self.codes) + i] = 0.0 if np.isnan(m.value) else m.value
            return out
        vals = [_summary(modality, m.data, self.specs[modality]) for m in items]
        return np.nan_to_num(np.mean(vals, 0))

    def size(self, modality: str) -> int:
        if modality == "clinical":
            return 2 * len(self.codes)
        spec = self.specs[modality]
        return len(_summary(modality, np.zeros(spec.shape(), dtype=np.float32), spec))

    def __call__(self, tl: Timeline) -> np.ndarray:
        ev = tl.events[-1]
        parts = [np.array([ev.age_days / 365.25])]
        for m in self.modalities:
            items = [x for x in ev.measurements if x.modality == m]
            block = self._block(m, items) if items else None
            parts.append(np.array([float(block is not None)]))
            parts.append(block if block is not None else np.zeros(self.size(m)))
        return np.concatenate(parts)

    def matrix(self, histories: Sequence[Timeline]) -> np.ndarray:
        return np.stack([self(h) for h in histories])


def fit_logistic(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """Standardised features -> L2 logistic regression, strength by 5-fold cross-validated log-loss."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = int(min(5, np.bincount(y.astype(int)).min()))
    if folds < 2:
        raise ValueError("logistic baseline: needs at least 2 people of each class in the training data")
    import sklearn

    # pure L2, said explicitly where scikit-learn >= 1.9 warns about its coming defaults
    quiet = (
        {"l1_ratios": (0.0,), "use_legacy_attributes": False}
        if tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 9)
        else {}
    )
    model = make_pipeline(
        StandardScaler(),
        LogisticRegressionCV(
            Cs=np.logspace(-3, 1, 9), cv=folds, scoring="neg_log_loss", max_iter=2000, random_state=seed, **quiet
        ),
    )
    return model.fit(x, y.astype(int))


def last_visit_logistic(task, root, train_split: str = "train", test_split: str = "test", seed: int = 0):
    """The baseline for a fine-tuning task (a :class:`~omnimodal.downstream.task.FinetuneTask`): the same people,
    landmarks and modalities, logistic regression on :class:`LastVisitFeatures` for "outcome by the horizon"
    (people with a known status then). Returns ``(predictions on test_split, fitted model)``."""
    from ..evaluation.metrics import status_at  # noqa: PLC0415 - the model stack only when used
    from .predict import Predictions, landmark_items  # noqa: PLC0415

    mods = task.hparams.get("modalities") or list(task.prep.specs)
    feats = LastVisitFeatures({m: s for m, s in task.prep.specs.items() if m in mods}, task.prep.clinical_codes)
    tr, _ = landmark_items(task, root, train_split, task.landmark)
    te, excluded = landmark_items(task, root, test_split, task.landmark)

    def arrays(items):
        t = np.array([d.get("time", np.nan) for _, d in items])
        e = np.array([d.get("event", d.get("y", 0.0)) for _, d in items]).astype(int)
        return feats.matrix([h for h, _ in items]), t, e

    x, t, e = arrays(tr)
    if task.head_cfg.kind == "survival":
        known, y = status_at(t, e, task.head_cfg.horizon_days)
        x, y = x[known], y[known]
    else:
        y = e.astype(float)
    model = fit_logistic(x, y, seed)
    x_te, t_te, e_te = arrays(te)
    target = (
        {"time": t_te, "event": e_te.astype(float)} if task.head_cfg.kind == "survival" else {"y": e_te.astype(float)}
    )
    return Predictions(target, model.predict_proba(x_te)[:, 1], None, excluded), model


__all__ = ["LastVisitFeatures", "fit_logistic", "last_visit_logistic"]
