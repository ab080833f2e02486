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
        self.numeric = nn.ModuleDict({col.replace(".", "_"): nn.Linear(1, d) for col, emb in cfg.sequence_features.items() if emb is None})
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
        for col, emb in self.cfg.sequence_features.items():
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
        }

    def item_scores(self, hidden: Tensor) -> Tensor:
        """Scores of every item for hidden states ``[..., d]`` (full catalogue, tied weights)."""
        return hidden @ self.encoder.item_table.weight.T


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


def next_item_loss(model: MultiTaskModel, hidden: Tensor, targets: Tensor, mask: Tensor, num_negatives: int = 0, log_q: Tensor | None = None) -> Tensor:
    """Cross-entropy of the next item over masked positions.

    ``num_negatives == 0``: full softmax over the catalogue. Otherwise a sampled
    softmax: ``num_negatives`` items drawn from the proposal ``q`` (shared by the
    batch), with the log-Q correction subtracting ``log q`` from every logit so
    the estimate is unbiased for popular items (Yi et al., 2019).
    """
    h = hidden[mask]  # [N, d]
    y = targets[mask]
    if h.shape[0] == 0:
        return hidden.sum() * 0.0
    if num_negatives <= 0:
        return F.cross_entropy(model.item_scores(h), y)
    assert log_q is not None, "sampled softmax needs the proposal's log probabilities"
    weight = model.encoder.item_table.weight
    neg = torch.multinomial(log_q.exp(), num_negatives, replacement=True)  # [K]
    pos_logit = (h * weight[y]).sum(-1, keepdim=True) - log_q[y].unsqueeze(-1)
    neg_logit = h @ weight[neg].T - log_q[neg].unsqueeze(0)
    neg_logit = neg_logit.masked_fill(neg.unsqueeze(0) == y.unsqueeze(-1), float("-inf"))  # accidental hits
    logits = torch.cat([pos_logit, neg_logit], dim=1)
    return F.cross_entropy(logits, torch.zeros(h.shape[0], dtype=torch.long, device=h.device))


def masked_bce(logit: Tensor, label: Tensor, mask: Tensor) -> Tensor:
    """Binary cross-entropy over rows whose label is not censored (``mask == 1``)."""
    m = mask.bool()
    if not m.any():
        return logit.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logit[m], label[m].float())
