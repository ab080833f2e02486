"""The next-item and next-event-type baselines, fitted on the gold train split and scored over the full catalogue.

Pure numpy / scipy.sparse / torch: no Spark, no I/O. The purchase and churn
baselines are in :mod:`shopseq.training.profile_baselines`.

**most_popular, markov, repeat_last** (:func:`fit_baselines`: counts of the
unique train events, :class:`SequenceBaselines`):

* ``most_popular``: items by their count in the train data; next event type:
  the most frequent next event type of the train examples.
* ``markov`` (first order), fitted on the kind of transition it is scored on.
  The next-item label at a cutoff is the first event after the cutoff, which
  for session-end cutoffs is usually the next session's first item, not a
  within-session step. So the next item is scored by how often it was the
  label after a train cutoff whose window ended with the same last item
  (``cutoff_transitions``). A last item never seen at a train cutoff backs off
  to all consecutive train transitions from it (``transitions``), and one
  never seen followed (or OOV) to popularity; popularity also orders the ties.
  Under stride-1 cutoffs (every event a cutoff) the two kinds coincide. Next
  event type: the most frequent next type after the last event's type at the
  train cutoffs, falling back to the most frequent overall.
* ``repeat_last``: the window's last item first, then popularity; next event
  type: the last event's type.

Item counts and transitions cover the events inside the train windows and
the train next-item labels, each event once (see "Train data" below).

**The literature's next-item baselines.** Every scorer is fitted
with ``fit(train, n_items, params)`` and answers
``scores(data, rows) -> Tensor [n_rows, n_items] float64`` for the rows
``rows`` of a gold split ``data`` (a dict of tensors as
:func:`shopseq.training.data.load_tensors` returns them): higher is better; the
caller ignores index 0 (padding) and 1 (OOV). :func:`fit_next_item_baselines`
fits them all from one pass over the train data.

Methods (each class's docstring has the method, the reference, the parameters
and the cost):

* ``recent_pop``: items by their count among the events of the last
  ``recent_days`` before each row's cutoff (Ji et al. 2020).
* ``reconsume``: the window's own items, recency-weighted (Anderson et al.
  2014; RepeatNet's repeat mode, Ren et al. 2019).
* ``item_knn``: items similar to the window's last item by session
  co-occurrence (Linden et al. 2003; Hidasi et al. 2016).
* ``sr``: sequential rules from the window's last item (Ludewig & Jannach 2018).
* ``vsknn``: vector-multiplication session kNN (Ludewig & Jannach 2018).

**Scores.** Each method computes a non-negative primary score ``p`` per item;
the returned score is ``1 + p`` where ``p > 0`` and ``0`` elsewhere, plus
``TIE_BREAK * pop_rank`` where ``pop_rank`` in ``[0, 1)`` is the item's rank
by train popularity (count, then lower index first) divided by ``n_items``.
So the items a method has evidence for come first in the order of ``p``,
items with equal ``p`` (and every item of a row with no evidence: an empty or
all-OOV window, an unseen last item) follow train popularity, and no two items
tie: the evaluation's tie rule never decides. Primaries closer than
``TIE_BREAK`` may swap (none of the methods below produces such near-ties
except by accident of floating point).

**Train data** (:func:`train_events`): consecutive train windows of a user
overlap, so each event is identified by ``(user_key, position)`` with the
position of window slot ``j`` ``frequency - L + j`` and the next-item label
at ``frequency``, and kept once. An event seen in a window carries its
``session_start_seq`` flag and the earliest ``cutoff_time_us`` of the windows
holding it (the first moment the data shows it happened: an upper bound on
its time, never in the future of that cutoff).
An event seen only as a label (the label of a user's last train example)
starts a new session (under the default ``session_end`` cutoffs every label
is the first event of the user's next session) and has no such time: it is
only known to be after its example's cutoff. Sessions are runs of a user's
consecutive positions cut at each session start and at each gap in the
positions (events no train window holds).

**Point in time.** ``recent_pop`` counts only events at or before each row's
cutoff. ``item_knn``, ``sr`` and ``vsknn`` learn from every train session, as
the literature does: under the temporal protocol all of them precede every
val/test cutoff; under ``leave_last_out`` they include other users' sessions
after a row's cutoff (RecBole's protocol has the same property).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from scipy import sparse
from torch import Tensor

from shopseq.training.metrics import SPECIAL_ITEMS
from shopseq.training.model import ITEM_FEATURE, last_valid_index

log = logging.getLogger(__name__)

SESSION_FEATURE = "session_start_seq"
ACTION_FEATURE = "event_type_idx_seq"
CUTOFF = "cutoff_time_us"
US_PER_DAY = 86_400 * 1_000_000
TIE_BREAK = 1e-6  # weight of the popularity rank that orders equal primary scores


@dataclass(frozen=True)
class BaselineParams:
    """Parameters of the next-item baselines (defaults: the references' usual values)."""

    recent_days: float = 1.0  # recent_pop: the window before each cutoff, in days
    recent_buckets: int = 24  # recent_pop: time buckets per window (an index only; counts stay exact)
    recent_scored_history: bool = True  # recent_pop: also count the scored split's own window events
    decay: float = 0.8  # reconsume: weight decay ** (distance from the window's end)
    knn_k: int = 100  # item_knn: neighbours kept per item
    knn_lambda: float = 20.0  # item_knn: shrinkage of the cosine
    sr_steps: int = 10  # sr: rules i -> j for j up to this many positions after i
    vsknn_k: int = 100  # vsknn: neighbour sessions per row
    vsknn_sample_size: int = 1000  # vsknn: the most recent candidate sessions considered per row

    def __post_init__(self) -> None:
        checks = {
            "recent_days": self.recent_days > 0,
            "recent_buckets": self.recent_buckets >= 1,
            "decay": 0 < self.decay <= 1,
            "knn_k": self.knn_k >= 1,
            "knn_lambda": self.knn_lambda >= 0,
            "sr_steps": self.sr_steps >= 1,
            "vsknn_k": self.vsknn_k >= 1,
            "vsknn_sample_size": self.vsknn_sample_size >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"BaselineParams: out of range: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")


class Scorer(Protocol):
    """A fitted next-item baseline."""

    def scores(self, data: dict[str, Tensor], rows: slice) -> Tensor: ...


# --------------------------------------------------------------------------- train data


@dataclass(frozen=True)
class TrainEvents:
    """Unique train events sorted by ``(user, position)``, with their session ids (see the module docstring)."""

    user: np.ndarray  # int64 user_key
    pos: np.ndarray  # int64 position in the user's history
    item: np.ndarray  # int64 item index (1 = OOV)
    session: np.ndarray  # int64 session id, 0 .. n_sessions - 1, increasing along the order
    observed: np.ndarray  # bool: held by a window (else seen only as a label)
    time_us: np.ndarray | None  # int64: observed: earliest cutoff of a window holding it; label only: its example's cutoff

    @property
    def n_sessions(self) -> int:
        return int(self.session[-1]) + 1 if len(self.session) else 0

    def session_time_us(self) -> np.ndarray:
        """``[n_sessions]``: the latest ``time_us`` of each session's events (its recency)."""
        if self.time_us is None:
            raise ValueError(f"session times need column {CUTOFF!r} in the train tensors")
        out = np.full(self.n_sessions, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(out, self.session, self.time_us)
        return out


def _require(data: dict[str, Tensor], columns: list[str], who: str) -> None:
    missing = [c for c in columns if c not in data]
    if missing:
        raise ValueError(f"{who}: the tensors lack column(s) {', '.join(missing)} (load them with the gold columns)")


def _window_entries(data: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """The non-padding window slots of every row: user, position, item, session-start flag, cutoff (or None)."""
    seq = data[ITEM_FEATURE].long().numpy()
    n, L = seq.shape
    keep = seq.reshape(-1) != 0
    freq = data["frequency"].long().numpy()
    out = {
        "user": np.repeat(data["user_key"].long().numpy(), L)[keep],
        "pos": (freq[:, None] - L + np.arange(L)[None, :]).reshape(-1)[keep],
        "item": seq.reshape(-1)[keep],
        "start": data[SESSION_FEATURE].long().numpy().reshape(-1)[keep] == 1 if SESSION_FEATURE in data else np.zeros(int(keep.sum()), bool),
    }
    out["time"] = np.repeat(data[CUTOFF].long().numpy(), L)[keep] if CUTOFF in data else None
    return out


def _first_per_event(user: np.ndarray, pos: np.ndarray, *later_keys: np.ndarray) -> np.ndarray:
    """Indexes of one entry per ``(user, pos)``: the first by ``later_keys`` (lexicographic), in ``(user, pos)`` order."""
    order = np.lexsort((*reversed(later_keys), pos, user))
    u, p = user[order], pos[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (u[1:] != u[:-1]) | (p[1:] != p[:-1])
    return order[first]


def train_events(train: dict[str, Tensor]) -> TrainEvents:
    """Unique train events (window slots and next-item labels) with session ids and times.

    Needs: ``item_idx_seq``, ``session_start_seq``, ``frequency``, ``user_key``,
    ``next_item_idx``, ``next_label_mask``; ``cutoff_time_us`` for the times
    (``time_us`` is None without it).
    """
    _require(train, [ITEM_FEATURE, SESSION_FEATURE, "frequency", "user_key", "next_item_idx", "next_label_mask"], "train_events")
    w = _window_entries(train)
    m = train["next_label_mask"].numpy().astype(bool)
    n_win, n_lab = len(w["item"]), int(m.sum())
    user = np.concatenate([w["user"], train["user_key"].long().numpy()[m]])
    pos = np.concatenate([w["pos"], train["frequency"].long().numpy()[m]])
    item = np.concatenate([w["item"], train["next_item_idx"].long().numpy()[m]])
    start = np.concatenate([w["start"], np.ones(n_lab, dtype=bool)])  # a label-only event starts a session
    label = np.concatenate([np.zeros(n_win, dtype=bool), np.ones(n_lab, dtype=bool)])
    t = np.concatenate([w["time"], train[CUTOFF].long().numpy()[m]]) if w["time"] is not None else np.zeros(len(item), np.int64)
    keep = _first_per_event(user, pos, label, t)  # a window entry first, the earliest cutoff first
    user, pos, item, start, label, t = user[keep], pos[keep], item[keep], start[keep], label[keep], t[keep]
    new = np.ones(len(keep), dtype=bool)
    new[1:] = (user[1:] != user[:-1]) | (pos[1:] != pos[:-1] + 1) | start[1:]
    session = np.cumsum(new) - 1
    return TrainEvents(user, pos, item, session, ~label, t if w["time"] is not None else None)


def popularity_rank(events: TrainEvents, n_items: int) -> np.ndarray:
    """``[n_items]`` in ``[0, 1)``: each item's rank by train count (ties: the lower index ranks higher) / ``n_items``."""
    real = events.item[(events.item >= SPECIAL_ITEMS) & (events.item < n_items)]
    counts = np.bincount(real, minlength=n_items)[:n_items]
    order = np.lexsort((-np.arange(n_items), counts))
    rank = np.empty(n_items, dtype=np.float64)
    rank[order] = np.arange(n_items, dtype=np.float64)
    return rank / n_items


def session_item_matrix(events: TrainEvents, n_items: int) -> sparse.csr_matrix:
    """``[n_sessions, n_items]`` binary: which real items each train session holds."""
    real = (events.item >= SPECIAL_ITEMS) & (events.item < n_items)
    x = sparse.csr_matrix(
        (np.ones(int(real.sum())), (events.session[real], events.item[real])), shape=(events.n_sessions, n_items), dtype=np.float64
    )
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def top_k_entries(row: np.ndarray, k: int, *keys: np.ndarray) -> np.ndarray:
    """Indexes of the entries to keep: per ``row``, the ``k`` largest by ``keys`` (the first key decides, the next break ties).

    Returned grouped by row; a final tie goes to the earlier entry.
    """
    order = np.lexsort((np.arange(len(row)), *[-key for key in reversed(keys)], row))
    r = row[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r, side="left")
    return order[rank < k]


def top_k_per_row(m: sparse.spmatrix, k: int, prefer: np.ndarray | None = None) -> sparse.csr_matrix:
    """Keep each row's ``k`` largest entries; ties go to the column with the larger ``prefer`` (else the lower index)."""
    m = sparse.csr_matrix(m)
    m.sum_duplicates()
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    tie = prefer[m.indices] if prefer is not None else -m.indices.astype(np.float64)
    kept = top_k_entries(rows, k, m.data, tie)
    return sparse.csr_matrix((m.data[kept], (rows[kept], m.indices[kept])), shape=m.shape)


# --------------------------------------------------------------------------- scoring helpers


def finish(primary: np.ndarray, pop_rank: np.ndarray) -> Tensor:
    """``1 + p`` where ``p > 0`` else 0, plus ``TIE_BREAK * pop_rank``: evidence first, popularity orders the rest."""
    out = np.where(primary > 0, 1.0 + primary, 0.0)
    out += TIE_BREAK * pop_rank[None, :]
    return torch.from_numpy(out)


def window(data: dict[str, Tensor], rows: slice) -> np.ndarray:
    """``[n_rows, L]`` int64 item indexes of the rows' windows."""
    return data[ITEM_FEATURE][rows].long().numpy()


def last_real_items(seq: np.ndarray) -> np.ndarray:
    """Each row's last non-padding item (0 for an all-padding row; may be OOV)."""
    L = seq.shape[1]
    idx = np.where(seq != 0, np.arange(L)[None, :], 0).max(axis=1)
    return seq[np.arange(len(seq)), idx]


def rows_of(item_matrix: sparse.csr_matrix, items: np.ndarray) -> np.ndarray:
    """Dense rows ``item_matrix[items]``; rows of padding / OOV / out-of-range items are zero."""
    n = item_matrix.shape[0]
    ok = (items >= SPECIAL_ITEMS) & (items < n)
    out = item_matrix[np.where(ok, items, 0)].toarray()
    out[~ok] = 0.0
    return out


@dataclass
class _Popularity:
    pop_rank: np.ndarray  # [n_items] in [0, 1): see popularity_rank

    @property
    def n_items(self) -> int:
        return len(self.pop_rank)

    def primary(self, data: dict[str, Tensor], rows: slice) -> np.ndarray:
        raise NotImplementedError

    def scores(self, data: dict[str, Tensor], rows: slice) -> Tensor:
        """``[n_rows, n_items]`` float64 (see the module docstring)."""
        return finish(self.primary(data, rows), self.pop_rank)


# --------------------------------------------------------------------------- most popular, Markov, repeat-last (next item and next event type)


@dataclass(frozen=True)
class SequenceBaselines:
    """Counts from the train split that ``most_popular``, ``markov`` and ``repeat_last`` score with."""

    item_counts: np.ndarray  # [n_items] float64: occurrences in the train data (each event once)
    transitions: sparse.csr_matrix  # [n_items, n_items]: times item j followed item i (consecutive train events)
    action_counts: np.ndarray  # [n_event_types]: next event types of the train examples
    action_transitions: np.ndarray  # [n_event_types, n_event_types]: next type by the last event's type
    cutoff_transitions: sparse.csr_matrix | None = None  # [n_items, n_items]: times j was the label after a train cutoff ending with i

    @property
    def tie_break(self) -> np.ndarray:
        """Popularity scaled into [0, 1): added to whole-number scores, it only orders their ties."""
        return self.item_counts / (self.item_counts.sum() + 1.0)


def _count_matrix(src: np.ndarray, dst: np.ndarray, n_items: int) -> sparse.csr_matrix:
    m = sparse.csr_matrix((np.ones(len(src)), (src, dst)), shape=(n_items, n_items), dtype=np.float64)
    m.sum_duplicates()
    return m


def fit_baselines(train: dict[str, Tensor], n_items: int, n_event_types: int) -> SequenceBaselines:
    """Item counts, item transitions (consecutive and at cutoffs) and event-type counts from the gold train split.

    Needs: ``item_idx_seq``, ``event_type_idx_seq``, ``session_start_seq``,
    ``frequency``, ``user_key``, ``next_item_idx``, ``next_event_type_idx``,
    ``next_label_mask``. Items and transitions are counted over the unique
    train events (:func:`train_events`); see the module docstring for what
    each baseline counts.
    """
    events = train_events(train)
    users, pos, items = events.user, events.pos, events.item  # sorted by (user, position)
    real = items >= SPECIAL_ITEMS
    counts = np.bincount(items[real], minlength=n_items)[:n_items].astype(np.float64)
    # Consecutive events of a user: pairs one position apart.
    pair = (users[1:] == users[:-1]) & (pos[1:] == pos[:-1] + 1) & real[:-1] & real[1:]
    transitions = _count_matrix(items[:-1][pair], items[1:][pair], n_items)
    # (last window item -> labelled next item) at each labelled train cutoff, once per (user, cutoff).
    m = train["next_label_mask"].numpy().astype(bool)
    last, nxt_item = last_items(train).numpy()[m], train["next_item_idx"].long().numpy()[m]
    _, once = np.unique(np.stack([train["user_key"].long().numpy()[m], train["frequency"].long().numpy()[m]], axis=1), axis=0, return_index=True)
    ok = np.zeros(len(last), dtype=bool)
    ok[once] = True
    ok &= (last >= SPECIAL_ITEMS) & (nxt_item >= SPECIAL_ITEMS)
    cutoff_transitions = _count_matrix(last[ok], nxt_item[ok], n_items)
    # Next event types at the train cutoffs (each example is one cutoff).
    nxt = train["next_event_type_idx"].long().numpy()[m]
    last_type = last_event_types(train)[m]
    action_counts = np.bincount(nxt, minlength=n_event_types)[:n_event_types].astype(np.float64)
    action_transitions = np.zeros((n_event_types, n_event_types))
    np.add.at(action_transitions, (last_type, nxt), 1.0)
    return SequenceBaselines(counts, transitions, action_counts, action_transitions, cutoff_transitions)


def last_items(data: dict[str, Tensor]) -> Tensor:
    """The last valid item of each window (``[B]`` long)."""
    seq = data[ITEM_FEATURE].long()
    return seq[torch.arange(len(seq)), last_valid_index(seq)]


def last_event_types(data: dict[str, Tensor]) -> np.ndarray:
    """The event type of each window's last valid event."""
    seq = data[ITEM_FEATURE].long()
    types = data[ACTION_FEATURE].long()
    return types[torch.arange(len(seq)), last_valid_index(seq)].numpy()


def popularity_scores(b: SequenceBaselines, n_rows: int) -> Tensor:
    """``most_popular``, ``[n_rows, n_items]``: every row scores items by their train count."""
    return torch.from_numpy(b.item_counts).expand(n_rows, -1)


def markov_scores(b: SequenceBaselines, last: Tensor) -> Tensor:
    """``markov``, ``[B, n_items]``: counts of what followed each row's last item at train cutoffs, backing off to all
    consecutive train transitions from it, then to popularity; popularity orders the ties."""
    n_items = b.transitions.shape[0]
    src = np.clip(last.long().numpy(), 0, n_items - 1)
    cut = b.cutoff_transitions if b.cutoff_transitions is not None else sparse.csr_matrix((n_items, n_items))
    at_cutoff = np.asarray(cut.sum(axis=1)).ravel()[src] > 0
    rows = np.zeros((len(src), n_items))
    if at_cutoff.any():
        rows[at_cutoff] = cut[src[at_cutoff]].toarray()
    if (~at_cutoff).any():
        rows[~at_cutoff] = b.transitions[src[~at_cutoff]].toarray()
    rows[src < SPECIAL_ITEMS] = 0.0  # padding / OOV last item: popularity only
    return torch.from_numpy(rows + b.tie_break[None, :])


def repeat_last_scores(b: SequenceBaselines, last: Tensor) -> Tensor:
    """``repeat_last``, ``[B, n_items]``: each row's last item first, then the rest by popularity."""
    scores = np.repeat(b.tie_break[None, :], len(last), axis=0)
    src = last.long().numpy()
    ok = (src >= SPECIAL_ITEMS) & (src < scores.shape[1])
    scores[np.flatnonzero(ok), src[ok]] += 1.0
    return torch.from_numpy(scores)


def predict_action(probs: np.ndarray) -> np.ndarray:
    """The most probable event type per row; padding (index 0) is never predicted (first index wins ties)."""
    p = np.array(probs, dtype=np.float64, copy=True)
    p[:, 0] = -np.inf
    return p.argmax(axis=1)


def action_baseline_predictions(b: SequenceBaselines, last_types: np.ndarray) -> dict[str, np.ndarray]:
    """Predicted next event type per row for ``most_popular``, ``markov`` and ``repeat_last``."""
    n_types = len(b.action_counts)
    prior = b.action_counts / (b.action_counts.sum() + 1.0)  # < 1: orders the ties of whole counts
    last = np.clip(np.asarray(last_types, dtype=np.int64), 0, n_types - 1)
    return {
        "most_popular": predict_action(np.repeat(prior[None, :], len(last), axis=0)),
        "markov": predict_action(b.action_transitions[last] + prior[None, :]),
        "repeat_last": np.asarray(last_types, dtype=np.int64),
    }


# --------------------------------------------------------------------------- recent popularity


def _range_rows(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(row, index)`` for every index in ``[starts[row], ends[row])`` (empty ranges give nothing)."""
    lengths = np.maximum(ends - starts, 0)
    row = np.repeat(np.arange(len(starts)), lengths)
    offset = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return row, starts[row] + offset


@dataclass
class _TimeIndex:
    """Real-item events sorted by time, with per-bucket item counts to sum whole buckets at once."""

    time_us: np.ndarray  # [E] sorted
    item: np.ndarray  # [E]
    bucket_start: np.ndarray  # [K + 1]: event index where each non-empty bucket starts, then E
    bucket_counts: sparse.csr_matrix  # [K, n_items]

    @classmethod
    def build(cls, time_us: np.ndarray, item: np.ndarray, n_items: int, bucket_us: int) -> _TimeIndex:
        order = np.argsort(time_us, kind="stable")
        t, it = time_us[order], item[order]
        bucket = t // bucket_us
        _, first, which = np.unique(bucket, return_index=True, return_inverse=True)
        counts = sparse.csr_matrix((np.ones(len(it)), (which, it)), shape=(len(first), n_items))
        counts.sum_duplicates()
        return cls(t, it, np.append(first, len(t)), counts)

    def counts(self, after_us: np.ndarray, until_us: np.ndarray) -> np.ndarray:
        """``[n, n_items]``: each item's events with ``after_us < time <= until_us``, per row (exact)."""
        lo = np.searchsorted(self.time_us, after_us, side="right")
        hi = np.searchsorted(self.time_us, until_us, side="right")
        b = self.bucket_start
        kf = np.searchsorted(b, lo, side="left")  # first bucket starting at or after lo
        kl = np.searchsorted(b, hi, side="right") - 1  # last bucket boundary at or before hi
        whole = kl > kf
        # Whole buckets [kf, kl) from the bucket counts; the head [lo, b[kf]) and tail [b[kl], hi) event by event.
        head_end = np.where(whole, b[np.minimum(kf, len(b) - 1)], hi)
        tail_start = np.where(whole, b[np.maximum(kl, 0)], hi)
        n, n_items = len(lo), self.bucket_counts.shape[1]
        r_b, k_b = _range_rows(np.where(whole, kf, 0), np.where(whole, kl, 0))
        pick = sparse.csr_matrix((np.ones(len(k_b)), (r_b, k_b)), shape=(n, self.bucket_counts.shape[0]))
        r1, e1 = _range_rows(lo, head_end)
        r2, e2 = _range_rows(tail_start, hi)
        r, e = np.concatenate([r1, r2]), np.concatenate([e1, e2])
        out = (pick @ self.bucket_counts).toarray()
        np.add.at(out, (r, self.item[e]), 1.0)
        return out


@dataclass
class RecentPopularity(_Popularity):
    """``recent_pop``: items by their number of events in ``(cutoff - recent_days, cutoff]`` of each scored row.

    Reference: Ji, Sun, Zhang, Li, "A Re-visit of the Popularity Baseline in
    Recommender Systems", SIGIR 2020 (popularity at the time of the
    recommendation, over a recent window).

    Events and times: the unique train events held by a train window, each at
    the earliest cutoff of a window holding it (an upper bound on its time, so
    a row never counts an event after its cutoff; an event first shown by a
    later window is counted a little late). Label-only train events are left
    out (their time is only known to be after their cutoff). With
    ``recent_scored_history`` (default) the scored split's own window events
    count too, timed the same way (earliest cutoff of a scored window holding
    them), deduplicated with the train ones: they are history that every
    row at or after that cutoff could see; the scored rows' labels are never
    read. Without it, under the temporal protocol every val/test cutoff lies
    more than ``gap_days`` after the last train event, and ``recent_pop``
    falls back to popularity on every row.

    Parameters: ``recent_days`` (the window), ``recent_buckets`` (time buckets
    per window for the index; the counts are exact, the buckets only let a row
    sum its whole buckets at once).

    Cost: fit O(E log E) time, O(E) memory (E = unique window events). Per
    scored row O(B + e_b + d) with B = ``recent_buckets``, e_b = events in
    the window's two edge buckets and d = distinct items per bucket summed over
    the window's buckets, plus the dense [n_rows, n_items] output; the first
    call on a split with ``recent_scored_history`` also indexes that split's
    window events, O(N L log(N L)).
    """

    window_us: int
    bucket_us: int
    scored_history: bool
    train_time: np.ndarray  # [E] earliest cutoff of a train window holding the event
    train_user: np.ndarray
    train_pos: np.ndarray
    train_item: np.ndarray
    index: _TimeIndex
    _cache: tuple[Tensor, _TimeIndex] | None = None

    @classmethod
    def fit(cls, train: dict[str, Tensor], n_items: int, params: BaselineParams | None = None, events: TrainEvents | None = None) -> RecentPopularity:
        """Needs the :func:`train_events` columns plus ``cutoff_time_us``."""
        p = params or BaselineParams()
        _require(train, [CUTOFF], "recent_pop")
        ev = events if events is not None else train_events(train)
        if ev.time_us is None:
            raise ValueError(f"recent_pop: the train events carry no times (column {CUTOFF!r})")
        keep = ev.observed & (ev.item >= SPECIAL_ITEMS) & (ev.item < n_items)
        window_us = int(round(p.recent_days * US_PER_DAY))
        bucket_us = max(1, window_us // p.recent_buckets)
        t, it = ev.time_us[keep], ev.item[keep]
        return cls(
            popularity_rank(ev, n_items), window_us, bucket_us, p.recent_scored_history, t, ev.user[keep], ev.pos[keep], it,
            _TimeIndex.build(t, it, n_items, bucket_us),
        )  # fmt: skip

    def _index_for(self, data: dict[str, Tensor]) -> _TimeIndex:
        if not self.scored_history:
            return self.index
        seq = data[ITEM_FEATURE]
        if self._cache is not None and self._cache[0] is seq:
            return self._cache[1]
        _require(data, ["user_key", "frequency"], "recent_pop")
        w = _window_entries(data)
        real = (w["item"] >= SPECIAL_ITEMS) & (w["item"] < self.n_items)
        user = np.concatenate([self.train_user, w["user"][real]])
        pos = np.concatenate([self.train_pos, w["pos"][real]])
        t = np.concatenate([self.train_time, w["time"][real]])
        item = np.concatenate([self.train_item, w["item"][real]])
        keep = _first_per_event(user, pos, t)
        index = _TimeIndex.build(t[keep], item[keep], self.n_items, self.bucket_us)
        self._cache = (seq, index)
        log.info("recent_pop: %d events indexed (%d from the train windows)", len(keep), len(self.train_item))
        return index

    def primary(self, data: dict[str, Tensor], rows: slice) -> np.ndarray:
        _require(data, [CUTOFF], "recent_pop")
        index = self._index_for(data)
        cut = data[CUTOFF][rows].long().numpy()
        return index.counts(cut - self.window_us, cut)


# --------------------------------------------------------------------------- re-consumption


@dataclass
class Reconsume(_Popularity):
    """``reconsume``: the window's items, each scored ``sum over its occurrences of decay ** distance``.

    ``distance`` = positions from the window's last event (0 for it). Items
    outside the window follow popularity.

    Reference: Anderson, Kumar, Tomkins, Vassilvitskii, "The Dynamics of
    Repeat Consumption", WWW 2014 (recency drives re-consumption); Ren et al.,
    "RepeatNet", AAAI 2019 (its repeat mode, here as a fixed heuristic).

    Parameters: ``decay`` in (0, 1].

    Cost: no fit beyond popularity (O(E)); scoring O(n_rows * L) plus the
    dense [n_rows, n_items] output.
    """

    decay: float

    @classmethod
    def fit(cls, train: dict[str, Tensor], n_items: int, params: BaselineParams | None = None, events: TrainEvents | None = None) -> Reconsume:
        """Needs the :func:`train_events` columns."""
        ev = events if events is not None else train_events(train)
        return cls(popularity_rank(ev, n_items), (params or BaselineParams()).decay)

    def primary(self, data: dict[str, Tensor], rows: slice) -> np.ndarray:
        seq = window(data, rows)
        n, L = seq.shape
        last = np.where(seq != 0, np.arange(L)[None, :], -1).max(axis=1)
        out = np.zeros((n, self.n_items))
        r = np.arange(n)
        for j in range(L):
            it = seq[:, j]
            ok = (it >= SPECIAL_ITEMS) & (it < self.n_items)
            out[r[ok], it[ok]] += self.decay ** (last[ok] - j).astype(np.float64)
        return out


# --------------------------------------------------------------------------- item kNN


@dataclass
class ItemKNN(_Popularity):
    """``item_knn``: items by their session co-occurrence similarity to the window's last item.

    ``sim(i, j) = n_ij / sqrt((n_i + lambda) (n_j + lambda))`` with ``n_ij``
    the train sessions holding both items (each session once) and ``n_i`` those
    holding ``i``: the cosine of the binary session x item columns, shrunk
    for rare items as in the item-kNN baseline of session-rec. ``sim(i, i)`` is
    0 (a repeat is ``reconsume``'s job). Each item keeps its ``knn_k`` most
    similar items (ties: the more popular). Only the last item scores (the
    reference's choice; ``vsknn`` uses the whole session).

    Reference: Linden, Smith, York, "Amazon.com recommendations: item-to-item
    collaborative filtering", IEEE Internet Computing 2003; the item-kNN
    baseline of Hidasi et al., "Session-based recommendations with recurrent
    neural networks", ICLR 2016.

    Parameters: ``knn_k``, ``knn_lambda``.

    Cost: fit O(sum over sessions of |s|^2) time for ``X^T X`` and
    O(nnz(X^T X) log) for the top-k, memory O(nnz(X^T X)) before and
    O(n_items * knn_k) after pruning; scoring O(n_rows * knn_k) plus the dense
    output.
    """

    similarity: sparse.csr_matrix  # [n_items, n_items], at most knn_k per row

    @classmethod
    def fit(cls, train: dict[str, Tensor], n_items: int, params: BaselineParams | None = None, events: TrainEvents | None = None) -> ItemKNN:
        """Needs the :func:`train_events` columns."""
        p = params or BaselineParams()
        ev = events if events is not None else train_events(train)
        x = session_item_matrix(ev, n_items)
        co = sparse.csr_matrix(x.T @ x)
        n = co.diagonal()
        rows = np.repeat(np.arange(n_items), np.diff(co.indptr))
        co.data[rows == co.indices] = 0.0  # no self-similarity
        co.eliminate_zeros()
        rows = np.repeat(np.arange(n_items), np.diff(co.indptr))
        co.data /= np.sqrt((n[rows] + p.knn_lambda) * (n[co.indices] + p.knn_lambda))
        pop = popularity_rank(ev, n_items)
        return cls(pop, top_k_per_row(co, p.knn_k, prefer=pop))

    def primary(self, data: dict[str, Tensor], rows: slice) -> np.ndarray:
        return rows_of(self.similarity, last_real_items(window(data, rows)))


# --------------------------------------------------------------------------- sequential rules


@dataclass
class SequentialRules(_Popularity):
    """``sr``: rules ``i -> j`` weighted ``1 / d`` whenever ``j`` follows ``i`` by ``d <= sr_steps`` positions in a train session.

    A row scores the summed weights of the rules from its window's last item
    (repeats ``i -> i`` count like any rule; no pruning of weak rules).

    Reference: Ludewig, Jannach, "Evaluation of session-based recommendation
    algorithms", User Modeling and User-Adapted Interaction 28 (2018) (SR,
    after Kamehkhosh et al. 2017), with its ``1/d`` weighting.

    Parameters: ``sr_steps``.

    Cost: fit O(E * sr_steps) time, memory O(nnz of the rules) <= O(E *
    sr_steps); scoring O(n_rows * rules per item) plus the dense output.
    """

    rules: sparse.csr_matrix  # [n_items, n_items]

    @classmethod
    def fit(cls, train: dict[str, Tensor], n_items: int, params: BaselineParams | None = None, events: TrainEvents | None = None) -> SequentialRules:
        """Needs the :func:`train_events` columns."""
        p = params or BaselineParams()
        ev = events if events is not None else train_events(train)
        real = (ev.item >= SPECIAL_ITEMS) & (ev.item < n_items)
        src, dst, weight = [], [], []
        for d in range(1, p.sr_steps + 1):  # events of a session are consecutive positions, in order
            pair = (ev.session[d:] == ev.session[:-d]) & real[d:] & real[:-d]
            src.append(ev.item[:-d][pair])
            dst.append(ev.item[d:][pair])
            weight.append(np.full(int(pair.sum()), 1.0 / d))
        rules = sparse.csr_matrix((np.concatenate(weight), (np.concatenate(src), np.concatenate(dst))), shape=(n_items, n_items))
        rules.sum_duplicates()
        return cls(popularity_rank(ev, n_items), rules)

    def primary(self, data: dict[str, Tensor], rows: slice) -> np.ndarray:
        return rows_of(self.rules, last_real_items(window(data, rows)))


# --------------------------------------------------------------------------- V-SKNN


def current_session_weights(seq: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``[n, L]`` linear decay weights of each row's current session, 0 elsewhere.

    The current session runs from the row's last session start (or the first
    event of the window when no session starts inside it) to its last event;
    its ``m``-th of ``n`` events weighs ``m / n`` (the last one 1).
    """
    n, L = seq.shape
    j = np.arange(L)[None, :]
    valid = seq != 0
    last = np.where(valid, j, -1).max(axis=1)
    start = np.where(valid & (starts == 1), j, -1).max(axis=1)
    start = np.where(start >= 0, start, np.where(valid, j, L).min(axis=1))
    length = (last - start + 1).astype(np.float64)
    inside = valid & (j >= start[:, None]) & (j <= last[:, None])
    return np.where(inside, (j - start[:, None] + 1) / np.maximum(length, 1.0)[:, None], 0.0)


@dataclass
class VSKNN(_Popularity):
    """``vsknn``: vector-multiplication session kNN over the train sessions.

    The row's current session (see :func:`current_session_weights`) is a
    vector over items weighted by linear position decay (the last event 1;
    an item seen twice keeps its later weight). Its similarity to a train
    session is the dot product with that session's binary item vector. The
    candidates are the train sessions sharing an item with it; the
    ``vsknn_sample_size`` most recent of them (by their latest event's time)
    are kept, then the ``vsknn_k`` most similar (ties: the more recent); an
    item scores the summed similarity of the neighbours holding it (the
    current session's own items included, as in the reference).
    Vectorised without an inverted-index walk per row: each item keeps a
    posting list of its ``vsknn_sample_size`` most recent sessions (the
    candidates of a row are the union of its items' lists, which holds the
    row's most recent candidates exactly), and the similarities of the
    sampled sessions are computed exactly from the full session vectors.

    Reference: Ludewig, Jannach, "Evaluation of session-based recommendation
    algorithms", UMUAI 28 (2018), V-SKNN (after Jannach & Ludewig, RecSys
    2017), with its dot-product similarity and linear decay.

    Parameters: ``vsknn_k``, ``vsknn_sample_size`` (S).

    Cost: fit O(E log E) time, O(E) memory (the binary session x item matrix
    and the pruned posting lists, <= nnz of it). Scoring a batch of n rows
    with q distinct current items each and train sessions of length s:
    O(n q S log(n q S)) for the candidates and the recency sample,
    O(n S s log(n q)) for the exact similarities, O(n k s) for the item
    scores, plus the dense [n, n_items] output. Measured: 1,024 rows against
    200,000 Zipf-distributed train sessions, q = 10, S = 1000: 5.7 s on one
    core (vs 64 s for the full query x session product).
    """

    sessions: sparse.csr_matrix  # [n_sessions, n_items] binary
    postings: sparse.csr_matrix  # [n_items, n_sessions]: each item's vsknn_sample_size most recent sessions
    recency: np.ndarray  # [n_sessions] rank by latest time (higher = more recent)
    k: int
    sample_size: int

    @classmethod
    def fit(cls, train: dict[str, Tensor], n_items: int, params: BaselineParams | None = None, events: TrainEvents | None = None) -> VSKNN:
        """Needs the :func:`train_events` columns plus ``cutoff_time_us`` (session recency)."""
        p = params or BaselineParams()
        _require(train, [CUTOFF], "vsknn")
        ev = events if events is not None else train_events(train)
        x = session_item_matrix(ev, n_items)
        t = ev.session_time_us()
        recency = np.empty(len(t), dtype=np.float64)
        recency[np.lexsort((np.arange(len(t)), t))] = np.arange(len(t), dtype=np.float64)
        postings = top_k_per_row(sparse.csr_matrix(x.T).multiply(recency[None, :] + 1.0), p.vsknn_sample_size)
        return cls(popularity_rank(ev, n_items), x, postings, recency, p.vsknn_k, p.vsknn_sample_size)

    def query(self, data: dict[str, Tensor], rows: slice) -> sparse.csr_matrix:
        """``[n_rows, n_items]``: the rows' current sessions with their decay weights (the later weight per item)."""
        _require(data, [SESSION_FEATURE], "vsknn")
        seq = window(data, rows)
        w = current_session_weights(seq, data[SESSION_FEATURE][rows].long().numpy())
        keep = (w > 0) & (seq >= SPECIAL_ITEMS) & (seq < self.n_items)
        r, item, weight = np.nonzero(keep)[0], seq[keep], w[keep]
        one = _first_per_event(r, item, -weight)  # an item seen twice: its larger (later) weight
        return sparse.csr_matrix((weight[one], (r[one], item[one])), shape=(len(seq), self.n_items))

    def primary(self, data: dict[str, Tensor], rows: slice) -> np.ndarray:
        q = self.query(data, rows)
        q.sort_indices()
        # Candidates: the union of each current item's most recent sessions holds each row's most recent ones.
        pattern = sparse.csr_matrix((np.ones(q.nnz), q.indices, q.indptr), shape=q.shape)
        cand = sparse.csr_matrix(pattern @ self.postings)
        row = np.repeat(np.arange(cand.shape[0]), np.diff(cand.indptr))
        keep = top_k_entries(row, self.sample_size, self.recency[cand.indices])
        row, col = row[keep], cand.indices[keep]
        # Exact similarity of each kept (row, session): the row's weights of the session's items.
        pair, at = _range_rows(self.sessions.indptr[col], self.sessions.indptr[col + 1])
        key = row[pair] * self.n_items + self.sessions.indices[at]
        q_key = np.repeat(np.arange(q.shape[0]), np.diff(q.indptr)) * self.n_items + q.indices
        hit_at = np.minimum(np.searchsorted(q_key, key), max(len(q_key) - 1, 0))
        hit = (q_key[hit_at] == key) if len(q_key) else np.zeros(len(key), dtype=bool)
        sim = np.bincount(pair[hit], weights=q.data[hit_at[hit]], minlength=len(col))
        near = top_k_entries(row, self.k, sim, self.recency[col])  # the most similar of them
        neighbours = sparse.csr_matrix((sim[near], (row[near], col[near])), shape=(q.shape[0], self.sessions.shape[0]))
        return (neighbours @ self.sessions).toarray()


# --------------------------------------------------------------------------- registry


BASELINES: dict[str, type[_Popularity]] = {
    "recent_pop": RecentPopularity,
    "reconsume": Reconsume,
    "item_knn": ItemKNN,
    "sr": SequentialRules,
    "vsknn": VSKNN,
}


def fit_next_item_baselines(train: dict[str, Tensor], n_items: int, params: BaselineParams | None = None) -> dict[str, Scorer]:
    """Fit every baseline of :data:`BASELINES` on the gold train split (its events read once).

    Needs: ``item_idx_seq``, ``session_start_seq``, ``frequency``,
    ``user_key``, ``next_item_idx``, ``next_label_mask``, ``cutoff_time_us``.
    """
    p = params or BaselineParams()
    _require(train, [CUTOFF], "fit_next_item_baselines")
    t0 = time.perf_counter()
    events = train_events(train)
    log.info("next-item baselines: %d unique train events in %d sessions (%.2f s)", len(events.item), events.n_sessions, time.perf_counter() - t0)
    out: dict[str, Scorer] = {}
    for name, cls in BASELINES.items():
        t0 = time.perf_counter()
        out[name] = cls.fit(train, n_items, p, events=events)  # type: ignore[attr-defined]
        log.info("fitted %s in %.2f s", name, time.perf_counter() - t0)
    return out
