"""The behaviour model: an Isolation Forest over per-principal window features,
its training, its scores and the features that drove a score.

Method: Liu, Ting and Zhou, "Isolation Forest", ICDM 2008
(doi:10.1109/ICDM.2008.17), as implemented by scikit-learn's
``IsolationForest``. Each tree isolates points by random splits; anomalies
are isolated in few splits. The score of a window is the paper's anomaly
score ``s(x, ψ) = 2^(-E[h(x)] / c(ψ))`` in (0, 1] — ``-score_samples(x)`` in
scikit-learn —: close to 1 is an anomaly, 0.5 or less is ordinary (paper §2).

Model input: the window features of :mod:`detectors.behaviour_features`, with
the three counts (rate, routes, object ids) on a ``log1p`` scale so that a
jump from 2 to 20 weighs like one from 20 to 200 (random splits are drawn
uniformly between a feature's min and max, so a linear scale would spend
almost every split on the few heaviest principals).

What drove a score: for each feature the robust z-score of the window against
the training windows, ``0.6745 · (x − median) / MAD`` on the model-input scale
(the "modified z-score" of Iglewicz and Hoaglin, *How to Detect and Handle
Outliers*, ASQC 1993; |z| > 3.5 flags an outlier there). When the MAD is 0
(most windows share one value, e.g. ``new_country`` = 0), the mean absolute
deviation times 1.253314 stands in for it (same source); when both are 0, any
difference gets |z| = :data:`MAX_Z`. This explains a score per feature; it is
not the forest's own attribution (path-length attributions such as DIFFI,
Carletti et al. 2020, are not computed).

Training is deterministic for a given ``seed``. Pure: no I/O — the model file
is written and read by :mod:`gatewatch.model_file`, through
:meth:`BehaviourModel.to_document` / :meth:`BehaviourModel.from_document`.

Example::

    >>> import random
    >>> from detectors.behaviour_features import FEATURES, WindowFeatures
    >>> rng = random.Random(1)
    >>> normal = [WindowFeatures(f"k{i % 9}", 300.0 * i, 300.0 * (i + 1), 20, (rng.uniform(3, 5),
    ...           rng.choice([2.0, 3.0]), rng.uniform(2, 6), rng.choice([0.0, 0.05]), 0.0), ())
    ...           for i in range(300)]
    >>> model = fit_model(normal, seed=0, since=0.0, until=300.0 * 300, trained_at="2025-01-01T00:00:00+00:00")
    >>> odd = WindowFeatures("k0", 0.0, 300.0, 3000, (600.0, 9.0, 2500.0, 0.8, 1.0), ())
    >>> [round(s.score, 2) for s in model.score([normal[0], odd])]
    [0.53, 0.62]
    >>> model.score([odd])[0].drivers[:2]
    ('new_country', 'request_rate_per_min')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sklearn
from sklearn.ensemble import IsolationForest

from detectors.behaviour_features import FEATURES, WINDOW_S, WindowFeatures

#: Identifies the model document (and its version) in a model file.
MODEL_FORMAT = "gatewatch.behaviour/1"
#: Features given to the forest on a log1p scale (counts).
LOG_FEATURES = frozenset({"request_rate_per_min", "distinct_routes", "distinct_object_ids"})
#: Windows with fewer requests are neither trained on nor scored: too little to judge.
MIN_REQUESTS = 5
#: Fewest training windows accepted (a forest sub-samples 256 per tree by default; far
#: fewer leaves the path-length normalisation c(ψ) to small-sample noise).
MIN_TRAINING_WINDOWS = 100
#: Fewest distinct principals in the training windows (one principal's habits are not a population).
MIN_TRAINING_PRINCIPALS = 3
#: Largest |robust z| reported.
MAX_Z = 1000.0
#: A feature with |z| at least this drove the score (Iglewicz and Hoaglin's outlier rule).
DRIVER_Z = 3.5
_MAD_TO_Z = 0.6745
_MEAN_AD_TO_Z = 0.7979  # 1 / 1.253314, Iglewicz and Hoaglin's MeanAD variant


class TooLittleHistory(ValueError):
    """The training windows are too few (or from too few principals) to fit a model."""


def model_input(values: Sequence[Sequence[float]]) -> np.ndarray:
    """Feature rows (``FEATURES`` order) as the forest's input: float64, counts as log1p."""
    x = np.array(values, dtype=np.float64).reshape(-1, len(FEATURES))  # a copy: the input stays as it was
    for j, name in enumerate(FEATURES):
        if name in LOG_FEATURES:
            x[:, j] = np.log1p(np.maximum(x[:, j], 0.0))
    return x


@dataclass(frozen=True, slots=True)
class ScoredWindow:
    """A window with its anomaly score (0..1], per-feature robust z-scores and the
    features with |z| >= :data:`DRIVER_Z`, strongest first."""

    window: WindowFeatures
    score: float
    z: tuple[float, ...]
    drivers: tuple[str, ...]


@dataclass(frozen=True)
class BehaviourModel:
    """A fitted forest with what is needed to use and explain it.

    ``medians`` are the training medians (raw feature scale, ``FEATURES`` order);
    ``centers``/``scales`` the model-input medians and z-score divisors; ``training``
    the training summary (range in epoch s, windows, principals, score quantiles).
    """

    estimator: IsolationForest
    feature_names: tuple[str, ...]
    window_s: float
    min_requests: int
    medians: tuple[float, ...]
    centers: tuple[float, ...]
    scales: tuple[float, ...]
    seed: int
    contamination: str | float
    sklearn_version: str
    trained_at: str
    training: Mapping[str, Any]

    def check_compatible(self) -> None:
        """Raise ``ValueError`` if this model was trained on other features or windows."""
        if tuple(self.feature_names) != FEATURES or self.window_s != WINDOW_S:
            raise ValueError(f"model features {list(self.feature_names)} / window {self.window_s} s do not "
                             f"match this version's {list(FEATURES)} / {WINDOW_S} s: train it again")

    def score(self, windows: Sequence[WindowFeatures]) -> list[ScoredWindow]:
        """Score the windows with at least ``min_requests`` requests (the others are left out)."""
        kept = [w for w in windows if w.requests >= self.min_requests]
        if not kept:
            return []
        x = model_input([w.values for w in kept])
        scores = -self.estimator.score_samples(x)
        z = np.clip((x - np.asarray(self.centers)) / np.asarray(self.scales), -MAX_Z, MAX_Z)
        out = []
        for window, score, row in zip(kept, scores, z):
            order = sorted(range(len(FEATURES)), key=lambda j: (-abs(row[j]), j))
            drivers = tuple(FEATURES[j] for j in order if abs(row[j]) >= DRIVER_Z)
            out.append(ScoredWindow(window, float(score), tuple(round(float(v), 3) for v in row), drivers))
        return out

    def to_document(self) -> dict[str, Any]:
        """The model as a document of plain values and the estimator (for a model file)."""
        return {"format": MODEL_FORMAT, "estimator": self.estimator,
                "feature_names": list(self.feature_names), "window_s": self.window_s,
                "min_requests": self.min_requests, "medians": list(self.medians),
                "centers": list(self.centers), "scales": list(self.scales), "seed": self.seed,
                "contamination": self.contamination, "sklearn_version": self.sklearn_version,
                "trained_at": self.trained_at, "training": dict(self.training)}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> BehaviourModel:
        """Rebuild from :meth:`to_document`'s output. Raises ``ValueError`` on another format."""
        if doc.get("format") != MODEL_FORMAT or not isinstance(doc.get("estimator"), IsolationForest):
            raise ValueError(f"not a behaviour model document (format {doc.get('format')!r})")
        return cls(estimator=doc["estimator"], feature_names=tuple(doc["feature_names"]),
                   window_s=float(doc["window_s"]), min_requests=int(doc["min_requests"]),
                   medians=tuple(doc["medians"]), centers=tuple(doc["centers"]), scales=tuple(doc["scales"]),
                   seed=int(doc["seed"]), contamination=doc["contamination"],
                   sklearn_version=str(doc["sklearn_version"]), trained_at=str(doc["trained_at"]),
                   training=dict(doc["training"]))

    def describe(self) -> dict[str, Any]:
        """A short summary for evidence and logs."""
        return {"trained_at": self.trained_at, "since": self.training.get("since"),
                "until": self.training.get("until"), "windows": self.training.get("windows")}


def fit_model(windows: Iterable[WindowFeatures], *, since: float, until: float, trained_at: str,
              seed: int = 0, n_estimators: int = 100, contamination: str | float = "auto",
              min_requests: int = MIN_REQUESTS, min_windows: int = MIN_TRAINING_WINDOWS,
              min_principals: int = MIN_TRAINING_PRINCIPALS, threshold: float | None = None) -> BehaviourModel:
    """Fit the forest on the windows with at least ``min_requests`` requests.

    ``since``/``until``: the training range (epoch s), recorded; ``trained_at``: ISO time,
    recorded (passed in: no clock here); ``seed``: the forest's ``random_state``;
    ``contamination``: scikit-learn's (it sets only ``predict``'s offset, which gatewatch
    does not use; recorded); ``threshold``: if given, the training windows scoring at or
    above it are counted (``training["flagged"]``), to see what a threshold would flag.
    ``windows`` is iterated once; about 100 bytes are kept per window. Raises
    :class:`TooLittleHistory` below ``min_windows`` windows or ``min_principals`` principals.
    """
    rows: list[tuple[float, ...]] = []
    principals: set[str] = set()
    below = 0
    for w in windows:  # once, keeping only the values: a week of windows may be millions
        if w.requests >= min_requests:
            rows.append(w.values)
            principals.add(w.principal)
        else:
            below += 1
    if len(rows) < min_windows or len(principals) < min_principals:
        raise TooLittleHistory(
            f"{len(rows)} windows of >= {min_requests} requests from {len(principals)} principals; "
            f"need at least {min_windows} windows from {min_principals} principals")
    raw = np.asarray(rows, dtype=np.float64)
    x = model_input(raw)
    estimator = IsolationForest(n_estimators=n_estimators, contamination=contamination,
                                random_state=seed).fit(x)
    centers = np.median(x, axis=0)
    mad = np.median(np.abs(x - centers), axis=0) / _MAD_TO_Z
    mean_ad = np.mean(np.abs(x - centers), axis=0) / _MEAN_AD_TO_Z
    scales = np.where(mad > 0, mad, np.where(mean_ad > 0, mean_ad, 1.0 / MAX_Z))
    scores = -estimator.score_samples(x)
    quantiles = {f"p{q:g}": round(float(np.quantile(scores, q / 100)), 4) for q in (50, 90, 99, 99.9)}
    training = {"since": since, "until": until, "windows": len(rows), "principals": len(principals),
                "windows_below_min_requests": below,
                "score_quantiles": quantiles | {"max": round(float(scores.max()), 4)}}
    if threshold is not None:
        training["flagged"] = {"threshold": threshold, "windows": int((scores >= threshold).sum())}
    return BehaviourModel(estimator=estimator, feature_names=FEATURES, window_s=WINDOW_S,
                          min_requests=min_requests, medians=tuple(float(v) for v in np.median(raw, axis=0)),
                          centers=tuple(float(v) for v in centers), scales=tuple(float(v) for v in scales),
                          seed=seed, contamination=contamination, sklearn_version=sklearn.__version__,
                          trained_at=trained_at, training=training)
