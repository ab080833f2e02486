"""The multi-task sequence model: one shared encoder, four heads.

Inputs are the gold arrays named in the schema artifact (all ``[B, L]``,
padding index 0, padding on either side): ``item_idx_seq``, ``category_idx_seq``,
``event_type_idx_seq``, ``dt_bucket_seq``, ``hour_seq``, ``dow_seq``,
``session_start_seq`` (ints, each with its embedding table) and ``price_seq``
(float, projected linearly). The encoder is a
causal Transformer (SASRec-style) or a GRU (GRU4Rec-style); position ``t``
sees only positions ``<= t``.

Heads:
- next item: scores against the item embedding table (weights tied), trained
  at every valid position of the window (target = the item at ``t + 1``, and
  the label's next item at the last position), with the full softmax or a
  sampled softmax with log-Q correction for large catalogues;
- next event type, purchase within H_p and churn within H_c: small MLPs over
  the cutoff's user state, the last valid position's state joined with the
  user-profile features as of the cutoff
  (numeric profiles as ``sign(x) * log1p(|x|)`` standardised with the train
  split's statistics from the schema artifact, projected; the top category
  through the shared category embedding) and a summary of the window's recent
  sessions (:func:`window_summary`: lengths, gaps, event-type mix), plus a
  linear "wide" path over the profiles and that summary for purchase and churn,
  trained with a larger learning rate (``train.wide_lr_scale``). Next event type is trained on the cutoff's label only: the
  question is asked after a session or a day, and a head trained between two
  events of a session would mostly learn within-session steps (and cannot tell
  whether the session has ended).
Censored labels are masked out of the loss, never counted as negatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ITEM_FEATURE = "item_idx_seq"  # the sequence whose embedding table also scores next items (tied weights)
TYPE_FEATURE = "event_type_idx_seq"  # the event types that key the repeat bias (repeat: recency_type)
FIRST_ITEM = 2  # item indexes: 0 padding, 1 out-of-vocabulary (shopseq.features.vocab); never given a repeat bias


@dataclass(frozen=True)
class ModelConfig:
    """Sizes come from the gold schema artifact (``schema.json``); the rest from ``train`` config.

    ``sequence_features`` maps each ``[B, L]`` gold column to the embedding
    table it uses, or ``None`` for a float feature (projected linearly).
    """

    embedding_sizes: dict[str, int]
    sequence_features: dict[str, str | None]
    max_len: int
    n_event_types: int
    profile_features: dict[str, str | None] = None  # type: ignore[assignment]  # scalar profile column -> embedding table or None (numeric)
    profile_scale: dict[str, dict[str, float]] = None  # type: ignore[assignment]  # numeric profile -> mean/std of sign(x)*log1p(|x|) on train
    encoder: Literal["transformer", "gru"] = "transformer"
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.1
    repeat: Literal["none", "recency", "recency_type", "mixture"] = "none"  # learned re-consumption (see RepeatBias)
    inputs: tuple[str, ...] | None = None  # sequence features the encoder reads (None = all; the item sequence always)
    embedding_init_std: float | None = None  # None: PyTorch's N(0, 1); else N(0, std) for every embedding table

    @classmethod
    def from_schema(cls, schema: dict, **train: object) -> "ModelConfig":
        """Build from the gold schema artifact written by ``shopseq features``."""
        seq = {c["name"]: c.get("embedding") for c in schema["columns"] if c.get("role") == "sequence" and c["shape"]}
        prof = {c["name"]: c.get("embedding") for c in schema["columns"] if c.get("role") == "profile" and not c["shape"]}
        sizes = dict(schema["embedding_sizes"])
        return cls(embedding_sizes=sizes, sequence_features=seq, max_len=int(schema["max_len"]), n_event_types=sizes["event_type"], profile_features=prof, profile_scale=schema.get("profile_scale"), **train)  # type: ignore[arg-type]


class SequenceEncoder(nn.Module):
    """Embeds the feature arrays and encodes them causally into ``[B, L, dim]``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.tables = nn.ModuleDict({name: nn.Embedding(size, d, padding_idx=0) for name, size in cfg.embedding_sizes.items()})
        if cfg.embedding_init_std is not None:
            for table in self.tables.values():
                nn.init.normal_(table.weight, 0.0, cfg.embedding_init_std)
                with torch.no_grad():
                    table.weight[0].zero_()
        self.read = {col: emb for col, emb in cfg.sequence_features.items() if cfg.inputs is None or col == ITEM_FEATURE or col in cfg.inputs}
        self.numeric = nn.ModuleDict({col.replace(".", "_"): nn.Linear(1, d) for col, emb in self.read.items() if emb is None})
        self.position = nn.Embedding(cfg.max_len, d)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.encoder == "transformer":
            layer = nn.TransformerEncoderLayer(d, cfg.heads, 4 * d, cfg.dropout, batch_first=True, norm_first=True)
            self.body: nn.Module = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        else:
            self.body = nn.GRU(d, d, num_layers=cfg.layers, batch_first=True, dropout=cfg.dropout if cfg.layers > 1 else 0.0)

    @property
    def item_table(self) -> nn.Embedding:
        return self.tables[self.cfg.sequence_features[ITEM_FEATURE]]  # type: ignore[index,return-value]

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        item = batch[ITEM_FEATURE].long()
        valid = item != 0
        L = item.shape[1]
        x = self.position(torch.arange(L, device=item.device)).unsqueeze(0)
        for col, emb in self.read.items():
            if emb is None:
                x = x + self.numeric[col.replace(".", "_")](batch[col].float().unsqueeze(-1))
            else:
                size = self.cfg.embedding_sizes[emb]
                x = x + self.tables[emb](batch[col].long().clamp(0, size - 1))
        x = self.drop(self.norm(x)) * valid.unsqueeze(-1)
        if isinstance(self.body, nn.GRU):
            out, _ = self.body(x)
        else:
            out = self.body(x, mask=attention_mask(valid, self.cfg.heads))
        return out * valid.unsqueeze(-1)


class RepeatBias(nn.Module):
    """Learned re-consumption scores: what the model adds to the items already in the window.

    Seen from query position ``t``, window position ``p <= t`` holding a real
    item (index >= 2) gets the weight ``w[t - p, type_p]``: one parameter per
    recency (0 = the event at ``t`` itself) and, with ``by_type``, per event
    type of that event (one column otherwise). An item's repeat score is the
    sum over the positions that hold it (:func:`window_scores`), so it grows
    with how often and how recently the user touched it: a learned
    recency-weighted re-consumption baseline (cf. RepeatNet, Ren et al. 2019)
    that the softmax contains as a special case. Padding, OOV and positions
    after ``t`` (the future) get exactly 0. Zero-initialised: training starts
    from the plain dot-product scores.

    With ``gate_dim`` (``repeat: mixture``, RepeatNet's two modes) the weights
    are instead the logits of a distribution over the window's positions
    (padding, OOV and the future get ``-inf``), and a gate ``g = sigmoid(a . h)``
    from the hidden state mixes it with the catalogue softmax:
    ``p(i) = g * sum_{p: item_p = i} softmax(w)_p + (1 - g) * softmax(h . e_i)``
    (:meth:`MultiTaskModel.item_scores` returns ``log p``). A window item can
    then outrank every unseen item however the dot products fall, which an
    additive bias only reaches with large weights.
    """

    def __init__(self, max_len: int, n_event_types: int, by_type: bool, gate_dim: int | None = None) -> None:
        super().__init__()
        self.by_type = by_type
        self.weight = nn.Parameter(torch.zeros(max_len, n_event_types if by_type else 1))
        self.gate = nn.Linear(gate_dim, 1) if gate_dim else None

    def forward(self, items: Tensor, types: Tensor | None, query: Tensor) -> Tensor:
        """``[B, Q, L]`` weight of each window position as seen from query positions ``query [B, Q]``."""
        L = items.shape[1]
        age = query.unsqueeze(-1) - torch.arange(L, device=items.device)  # [B, Q, L]
        ok = (age >= 0) & (items >= FIRST_ITEM).unsqueeze(1)
        if self.by_type and types is not None:
            col = types.long().clamp(0, self.weight.shape[1] - 1).unsqueeze(1).expand_as(age)
        else:
            col = torch.zeros_like(age)
        w = self.weight[age.clamp(0, self.weight.shape[0] - 1), col]
        return torch.where(ok, w, torch.full_like(w, float("-inf") if self.gate is not None else 0.0))


class MultiTaskModel(nn.Module):
    """Encoder + next-item, next-action, purchase and churn heads."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = SequenceEncoder(cfg)
        profiles = cfg.profile_features or {}
        self.profile_numeric = [c for c, emb in profiles.items() if emb is None]
        self.profile_embedded = {c: emb for c, emb in profiles.items() if emb is not None}
        self.profile_proj = nn.Linear(len(self.profile_numeric), cfg.dim) if self.profile_numeric else None
        scale = cfg.profile_scale or {}
        mean = [float(scale.get(c, {}).get("mean", 0.0)) for c in self.profile_numeric]
        std = [max(float(scale.get(c, {}).get("std", 1.0)), 1e-6) for c in self.profile_numeric]
        self.register_buffer("profile_mean", torch.tensor(mean), persistent=False)
        self.register_buffer("profile_std", torch.tensor(std), persistent=False)
        self.n_summary = window_summary_size(cfg)
        user_dim = cfg.dim * (1 + (self.profile_proj is not None) + len(self.profile_embedded)) + self.n_summary
        # Next action is asked at the cutoff (after a session, a day), not between two events of a
        # session: a head over the cutoff's user state, trained on the cutoff's label only.
        self.action_head = _mlp(user_dim, cfg.dim, cfg.n_event_types)
        self.purchase_head = _mlp(user_dim, cfg.dim)
        self.churn_head = _mlp(user_dim, cfg.dim)
        # Wide part (wide & deep): a direct linear path from the profiles, so the
        # heads contain logistic regression on them as a special case.
        n_wide = len(self.profile_numeric) + self.n_summary
        self.purchase_wide = nn.Linear(n_wide, 1) if n_wide else None
        self.churn_wide = nn.Linear(n_wide, 1) if n_wide else None
        self.repeat = RepeatBias(cfg.max_len, cfg.n_event_types, cfg.repeat != "recency", cfg.dim if cfg.repeat == "mixture" else None) if cfg.repeat != "none" else None

    def wide_parameters(self) -> list[nn.Parameter]:
        """The wide parts' parameters (their own learning rate: ``train.wide_lr_scale``)."""
        return [p for m in (self.purchase_wide, self.churn_wide) if m is not None for p in m.parameters()]

    def profile_vector(self, batch: dict[str, Tensor]) -> Tensor | None:
        """``[B, P]`` numeric profiles as ``sign(x) * log1p(|x|)``, standardised with the train split's statistics (None without profiles)."""
        if not self.profile_numeric:
            return None
        x = torch.stack([batch[c].float() for c in self.profile_numeric], dim=-1)
        return (torch.sign(x) * torch.log1p(x.abs()) - self.profile_mean) / self.profile_std

    def user_state(self, batch: dict[str, Tensor], h_last: Tensor, profile: Tensor | None, summary: Tensor | None) -> Tensor:
        """``[B, user_dim]``: the last position's state joined with the profile features and the window summary."""
        parts = [h_last] if summary is None else [h_last, summary]
        if self.profile_proj is not None and profile is not None:
            parts.append(torch.relu(self.profile_proj(profile)))
        for col, emb in self.profile_embedded.items():
            size = self.cfg.embedding_sizes[emb]
            parts.append(self.encoder.tables[emb](batch[col].long().clamp(0, size - 1)))
        return torch.cat(parts, dim=-1)

    def _head(self, deep: nn.Module, wide: nn.Module | None, user: Tensor, wide_in: Tensor | None) -> Tensor:
        logit = deep(user).squeeze(-1)
        return logit if wide is None or wide_in is None else logit + wide(wide_in).squeeze(-1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        h = self.encoder(batch)  # [B, L, d]
        last = last_valid_index(batch[ITEM_FEATURE])
        h_last = h[torch.arange(h.shape[0], device=h.device), last]  # [B, d]
        profile = self.profile_vector(batch)
        summary = window_summary(batch, self.cfg) if self.n_summary else None
        user = self.user_state(batch, h_last, profile, summary)
        parts = [x for x in (profile, summary) if x is not None]
        wide_in = torch.cat(parts, dim=-1) if parts else None
        return {
            "hidden": h,
            "hidden_last": h_last,
            "action_logits": self.action_head(user),
            "purchase_logit": self._head(self.purchase_head, self.purchase_wide, user, wide_in),
            "churn_logit": self._head(self.churn_head, self.churn_wide, user, wide_in),
            "repeat_last": self.repeat_weights(batch, last.unsqueeze(1)).squeeze(1),
        }

    def repeat_weights(self, batch: dict[str, Tensor], query: Tensor | None = None) -> Tensor:
        """``[B, Q, L]`` repeat bias of each window position seen from ``query [B, Q]`` (every position when None).

        All zeros when the model has no repeat bias (``repeat: none``).
        """
        items = batch[ITEM_FEATURE].long()
        B, L = items.shape
        if query is None:
            query = torch.arange(L, device=items.device).expand(B, L)
        if self.repeat is None:
            return torch.zeros(B, query.shape[1], L, device=items.device)
        return self.repeat(items, batch.get(TYPE_FEATURE), query)

    def item_scores(self, hidden: Tensor, items: Tensor | None = None, repeat: Tensor | None = None) -> Tensor:
        """Scores of every item for hidden states ``[N, d]`` (full catalogue, tied weights).

        With the rows' windows ``items [N, L]`` and their repeat weights
        ``repeat [N, L]`` (the forward pass's ``repeat_last`` for the last
        position), each window item's repeat bias is added (:func:`window_scores`).
        With ``repeat: mixture`` the scores are the mixture's log-probabilities
        (see :class:`RepeatBias`), so a softmax over them gives ``p`` back.
        """
        scores = hidden @ self.encoder.item_table.weight.T
        if items is None or repeat is None:
            return scores
        if self.repeat is None or self.repeat.gate is None:
            return scores + window_scores(items, repeat.to(scores.dtype), scores.shape[-1])
        repeat = repeat.to(scores.dtype)
        seen = torch.isfinite(repeat).any(dim=-1, keepdim=True)  # [N, 1]: the window holds a real item
        p_window = torch.softmax(torch.where(seen, repeat, torch.zeros_like(repeat)), dim=-1) * seen
        gate = torch.sigmoid(self.repeat.gate(hidden.to(scores.dtype))) * seen  # no repeat mode without a window item
        p = gate * window_scores(items, p_window, scores.shape[-1]) + (1.0 - gate) * torch.softmax(scores, dim=-1)
        return torch.log(p.clamp_min(1e-30))


SUMMARY_FEATURES = ("session_start_seq", "dt_bucket_seq", "event_type_idx_seq")  # what window_summary reads


def window_summary_size(cfg: ModelConfig) -> int:
    """Width of :func:`window_summary`: 5 + the number of event types (0 when the schema lacks its inputs)."""
    return 5 + cfg.n_event_types if all(c in cfg.sequence_features for c in SUMMARY_FEATURES) else 0


def window_summary(batch: dict[str, Tensor], cfg: ModelConfig) -> Tensor:
    """``[B, 5 + n_event_types]``: how the window's recent sessions went, as plain numbers.

    ``log1p`` of the last and the previous session's length in events, the
    time-gap buckets before their first events (over the number of buckets),
    ``log1p`` of the sessions started in the window, and each event type's
    share of the window's events. A fading user's sessions get shorter and
    further apart and buy less: recent trends that lifetime profiles average
    away and that a small head learns slowly from the last state alone, so the
    churn and purchase heads (deep and wide) get them directly.
    """
    item = batch[ITEM_FEATURE]
    valid = item != 0
    pos = torch.arange(item.shape[1], device=item.device).expand_as(item)
    start = (batch["session_start_seq"] == 1) & valid
    none = torch.full_like(pos, -1)
    last_start = torch.where(start, pos, none).amax(1)  # -1: the window starts mid-session
    prev_start = torch.where(start & (pos < last_start.unsqueeze(1)), pos, none).amax(1)
    end = last_valid_index(item)
    first = torch.where(valid, pos, torch.full_like(pos, item.shape[1])).amin(1)
    last_len = end - torch.where(last_start >= 0, last_start, first) + 1
    prev_len = torch.where(prev_start >= 0, last_start - prev_start, torch.zeros_like(last_start))
    dt = batch["dt_bucket_seq"].float() / max(cfg.embedding_sizes.get("dt_bucket", 1) - 1, 1)

    def gap_at(i: Tensor) -> Tensor:
        return torch.where(i >= 0, dt.gather(1, i.clamp(min=0).unsqueeze(1)).squeeze(1), torch.zeros_like(i, dtype=dt.dtype))

    n = valid.sum(1).clamp(min=1).float()
    types = F.one_hot(batch["event_type_idx_seq"].long().clamp(0, cfg.n_event_types - 1), cfg.n_event_types).float()
    share = (types * valid.unsqueeze(-1)).sum(1) / n.unsqueeze(1)
    counts = torch.stack([last_len, prev_len, start.sum(1)], 1).clamp(min=0).float()
    return torch.cat([torch.log1p(counts[:, :2]), gap_at(last_start).unsqueeze(1), gap_at(prev_start).unsqueeze(1), torch.log1p(counts[:, 2:]), share], 1)


def _mlp(inp: int, hidden: int, out: int = 1) -> nn.Module:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, out))


def attention_mask(valid: Tensor, heads: int) -> Tensor:
    """``[B*heads, L, L]`` bool, True = blocked: the future and padding keys.

    The diagonal stays open so a padding row (which is masked out later) never
    attends to nothing, which would produce NaN.
    """
    L = valid.shape[1]
    eye = torch.eye(L, dtype=torch.bool, device=valid.device)
    causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=valid.device), diagonal=1)
    blocked = (causal.unsqueeze(0) | ~valid.unsqueeze(1)) & ~eye.unsqueeze(0)
    return blocked.repeat_interleave(heads, dim=0)


def last_valid_index(item: Tensor) -> Tensor:
    """Index of the last non-padding position per row (0 for an all-padding row)."""
    L = item.shape[1]
    pos = torch.arange(L, device=item.device).expand_as(item)
    return torch.where(item != 0, pos, torch.zeros_like(pos)).max(dim=1).values


def window_scores(items: Tensor, weights: Tensor, n_items: int) -> Tensor:
    """``[N, n_items]``: each row's window weights summed onto the items they sit on (``items, weights [N, L]``)."""
    out = torch.zeros(items.shape[0], n_items, dtype=weights.dtype, device=weights.device)
    return out.scatter_add(1, items.long().clamp(0, n_items - 1), weights)


def window_scores_at(items: Tensor, weights: Tensor, candidates: Tensor) -> Tensor:
    """``[N, C]``: :func:`window_scores` read at ``candidates [N, C]`` only, without a catalogue-wide row.

    Sorts each window, then finds each candidate's run of equal items with
    ``searchsorted`` and sums its weights from a running sum: O(N (L + C) log L),
    for sampled softmax over large catalogues.
    """
    sorted_items, order = items.long().sort(dim=1)
    csum = torch.cat([torch.zeros_like(weights[:, :1]), weights.gather(1, order).cumsum(1)], dim=1)  # [N, L + 1]
    cand = candidates.long().contiguous()
    lo = torch.searchsorted(sorted_items, cand, right=False)
    hi = torch.searchsorted(sorted_items, cand, right=True)
    return csum.gather(1, hi) - csum.gather(1, lo)


def next_targets(seq: Tensor, label: Tensor, label_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-position targets: ``seq[t+1]`` inside the window, ``label`` at the last valid position.

    Returns ``(targets [B, L], mask [B, L] bool)``; padding and censored
    labels are masked out.
    """
    B, L = seq.shape
    valid = seq != 0
    shifted = torch.cat([seq[:, 1:], torch.zeros(B, 1, dtype=seq.dtype, device=seq.device)], dim=1)
    nxt_valid = torch.cat([valid[:, 1:], torch.zeros(B, 1, dtype=torch.bool, device=seq.device)], dim=1)
    targets = torch.where(valid & nxt_valid, shifted, torch.zeros_like(seq))
    mask = valid & nxt_valid
    last = last_valid_index(seq)
    rows = torch.arange(B, device=seq.device)
    has_label = label_mask.bool() & valid[rows, last]
    targets[rows[has_label], last[has_label]] = label[has_label].to(seq.dtype)
    mask[rows[has_label], last[has_label]] = True
    return targets.long(), mask


def next_item_loss(
    model: MultiTaskModel,
    hidden: Tensor,
    targets: Tensor,
    mask: Tensor,
    num_negatives: int = 0,
    log_q: Tensor | None = None,
    items: Tensor | None = None,
    repeat: Tensor | None = None,
) -> Tensor:
    """Cross-entropy of the next item over masked positions.

    ``num_negatives == 0``: full softmax over the catalogue. Otherwise a sampled
    softmax: ``num_negatives`` items drawn from the proposal ``q`` (shared by the
    batch), with the log-Q correction subtracting ``log q`` from every logit so
    the estimate is unbiased for popular items (Yi et al., 2019). With the
    windows ``items [B, L]`` and the repeat weights ``repeat [B, L, L]``
    (:meth:`MultiTaskModel.repeat_weights` at every position), position ``t``
    scores items with the repeat bias of the window up to ``t``.
    """
    h = hidden[mask]  # [N, d]
    y = targets[mask]
    if h.shape[0] == 0:
        return hidden.sum() * 0.0
    win = rep = None
    if items is not None and repeat is not None:
        rows = mask.nonzero()[:, 0]
        win, rep = items[rows], repeat[mask]  # [N, L] each: the row's window and its weights seen from the position
    if num_negatives <= 0:
        return F.cross_entropy(model.item_scores(h, win, rep), y)
    if model.repeat is not None and model.repeat.gate is not None:
        raise ValueError("repeat: mixture needs the full softmax (num_negatives: 0): its window distribution is not a per-item additive bias")
    assert log_q is not None, "sampled softmax needs the proposal's log probabilities"
    weight = model.encoder.item_table.weight
    neg = torch.multinomial(log_q.exp(), num_negatives, replacement=True)  # [K]
    pos_logit = (h * weight[y]).sum(-1, keepdim=True) - log_q[y].unsqueeze(-1)
    neg_logit = h @ weight[neg].T - log_q[neg].unsqueeze(0)
    if win is not None and rep is not None:
        pos_logit = pos_logit + window_scores_at(win, rep, y.unsqueeze(-1))
        neg_logit = neg_logit + window_scores_at(win, rep, neg.expand(h.shape[0], -1))
    neg_logit = neg_logit.masked_fill(neg.unsqueeze(0) == y.unsqueeze(-1), float("-inf"))  # accidental hits
    logits = torch.cat([pos_logit, neg_logit], dim=1)
    return F.cross_entropy(logits, torch.zeros(h.shape[0], dtype=torch.long, device=h.device))


def masked_bce(logit: Tensor, label: Tensor, mask: Tensor) -> Tensor:
    """Binary cross-entropy over rows whose label is not censored (``mask == 1``)."""
    m = mask.bool()
    if not m.any():
        return logit.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logit[m], label[m].float())
