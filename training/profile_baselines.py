"""The purchase and churn baselines: logistic regression and LightGBM on the model's own inputs to those heads.

Pure numpy / torch / scikit-learn / LightGBM: no Spark, no I/O. Fitted on the
labelled rows of the gold *train* split only (a censored label is never a
negative).

Both see the inputs the model's purchase and churn heads see
(:func:`baseline_features`): the scalar profile features plus the model's
window summary (:func:`shopseq.training.model.window_summary`, built with
``ModelConfig.from_schema``).

* ``logistic_regression`` (scikit-learn): numeric profiles as
  ``sign(x) * log1p(|x|)``, the summary as it is, both standardised on train,
  embedded profiles (the top category) one-hot.
* ``lightgbm``: raw values, embedded profiles as categorical features, fixed
  hyper-parameters (:data:`LIGHTGBM_PARAMS`: 200 trees, 15 leaves, learning
  rate 0.05, at least 20 rows per leaf, seed 0, one thread), never tuned on
  the evaluated split.

A train split whose labelled rows hold one class gives a baseline that
predicts the train rate.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from shopseq.training.model import ITEM_FEATURE, ModelConfig, window_summary, window_summary_size

log = logging.getLogger(__name__)

BINARY_BASELINES: tuple[str, ...] = ("logistic_regression", "lightgbm")
# Fixed, small and documented; never tuned on the evaluated split.
LIGHTGBM_PARAMS: dict[str, Any] = {
    "n_estimators": 200, "num_leaves": 15, "learning_rate": 0.05, "min_child_samples": 20,
    "random_state": 0, "n_jobs": 1, "deterministic": True, "verbose": -1,
}  # fmt: skip


def profile_columns(schema: dict) -> tuple[list[str], list[str]]:
    """``(numeric, embedded)`` scalar profile columns of the gold schema artifact."""
    prof = [c for c in schema["columns"] if c.get("role") == "profile" and not c.get("shape")]
    return [c["name"] for c in prof if not c.get("embedding")], [c["name"] for c in prof if c.get("embedding")]


def profile_matrix(data: dict[str, Tensor], numeric: Sequence[str], embedded: Sequence[str]) -> np.ndarray:
    """``[n, len(numeric) + len(embedded)]`` float64: the raw profile values, numeric columns first."""
    cols = [data[c].double().numpy() for c in [*numeric, *embedded]]
    return np.stack(cols, axis=1) if cols else np.zeros((len(next(iter(data.values()))), 0))


@torch.no_grad()
def summary_matrix(data: dict[str, Tensor], cfg: ModelConfig, batch_size: int = 8192) -> np.ndarray:
    """``[n, window_summary_size(cfg)]`` float64: the model's :func:`shopseq.training.model.window_summary` of each window."""
    n = len(data[ITEM_FEATURE])
    width = window_summary_size(cfg)
    if width == 0:
        return np.zeros((n, 0))
    parts = [window_summary({k: v[s : s + batch_size] for k, v in data.items()}, cfg).double().numpy() for s in range(0, n, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, width))


def baseline_features(data: dict[str, Tensor], schema: dict) -> tuple[np.ndarray, int, int, int]:
    """The purchase / churn baselines' inputs: ``(x, n_numeric, n_embedded, n_summary)``.

    ``x`` columns: numeric profiles, embedded profiles, then the window
    summary (the model's inputs to its purchase and churn heads).
    """
    numeric, embedded = profile_columns(schema)
    summary = summary_matrix(data, ModelConfig.from_schema(schema))
    return np.hstack([profile_matrix(data, numeric, embedded), summary]), len(numeric), len(embedded), summary.shape[1]


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """``sign(x) * log1p(|x|)``: the scale the model reads profiles on."""
    return np.sign(x) * np.log1p(np.abs(x))


def profile_model(n_numeric: int, n_embedded: int, seed: int = 0, n_summary: int = 0, kind: str = "logistic_regression"):
    """The unfitted classifier for ``x = [numeric | embedded | summary]`` (see the module docstring).

    ``logistic_regression``: ``sign(x) * log1p(|x|)`` + standardisation for
    numeric columns, standardisation for the summary, one-hot for embedded
    ones. ``lightgbm``: :data:`LIGHTGBM_PARAMS` on the raw columns (embedded
    ones categorical at fit time).
    """
    if kind == "lightgbm":
        from lightgbm import LGBMClassifier

        return LGBMClassifier(**{**LIGHTGBM_PARAMS, "random_state": seed})
    if kind != "logistic_regression":
        raise ValueError(f"unknown profile baseline {kind!r}; expected one of {', '.join(BINARY_BASELINES)}")
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    numeric = list(range(n_numeric))
    embedded = list(range(n_numeric, n_numeric + n_embedded))
    summary = list(range(n_numeric + n_embedded, n_numeric + n_embedded + n_summary))
    parts = [("numeric", make_pipeline(FunctionTransformer(signed_log1p), StandardScaler()), numeric), ("embedded", OneHotEncoder(handle_unknown="ignore"), embedded)]
    if summary:
        parts.append(("summary", StandardScaler(), summary))
    return make_pipeline(ColumnTransformer(parts), LogisticRegression(max_iter=1000, random_state=seed))


@dataclass
class ProfileBaseline:
    """A fitted purchase / churn baseline, or the train rate when train has one class."""

    pipeline: object | None
    train_rate: float
    n_train: int

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.pipeline is None:
            return np.full(len(x), self.train_rate)
        return self.pipeline.predict_proba(x)[:, 1]  # type: ignore[attr-defined]


def fit_profile_baseline(
    x: np.ndarray, labels: np.ndarray, mask: np.ndarray, n_numeric: int, n_embedded: int, n_summary: int = 0, kind: str = "logistic_regression", seed: int = 0
) -> ProfileBaseline:
    """Fit ``kind`` (:data:`BINARY_BASELINES`) on the rows whose label mask is 1 (censored rows are never used)."""
    m = np.asarray(mask).astype(bool)
    y = np.asarray(labels)[m].astype(np.int64)
    rate = float(y.mean()) if len(y) else math.nan
    if len(np.unique(y)) < 2:
        log.warning("%s: %d labeled train rows with a single class; predicting the train rate %s", kind, len(y), rate)
        return ProfileBaseline(None, 0.0 if math.isnan(rate) else rate, len(y))
    model = profile_model(n_numeric, n_embedded, seed, n_summary, kind)
    fit_args = {"categorical_feature": list(range(n_numeric, n_numeric + n_embedded))} if kind == "lightgbm" and n_embedded else {}
    model.fit(np.asarray(x)[m], y, **fit_args)
    return ProfileBaseline(model, rate, len(y))
