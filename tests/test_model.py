"""The sequence model on tiny literal inputs: shapes and the semantic properties that matter."""

from __future__ import annotations

import pytest
import torch

from training.model import MultiTaskModel, ModelConfig, masked_bce, next_item_loss, next_targets, window_summary, window_summary_size


SEQ = {"item_idx_seq": "item", "category_idx_seq": "category", "event_type_idx_seq": "event_type", "hour_seq": "hour", "price_seq": None}


def _batch(items: list[list[int]]) -> dict[str, torch.Tensor]:
    item = torch.tensor(items)
    valid = (item != 0).long()
    return {"item_idx_seq": item, "category_idx_seq": valid * 2, "event_type_idx_seq": valid * 3, "hour_seq": valid * 5, "price_seq": valid.float() * 0.5}


def _model(encoder: str) -> MultiTaskModel:
    torch.manual_seed(0)
    sizes = {"item": 10, "category": 5, "event_type": 6, "hour": 25}
    cfg = ModelConfig(embedding_sizes=sizes, sequence_features=SEQ, max_len=5, n_event_types=6, encoder=encoder, dim=16, heads=2, dropout=0.0)
    return MultiTaskModel(cfg).eval()


def test_config_from_schema_artifact():
    schema = {
        "max_len": 5,
        "embedding_sizes": {"item": 10, "category": 5, "event_type": 6, "hour": 25},
        "columns": [
            {"name": "user_id", "shape": [], "role": "id"},
            *[{"name": c, "shape": [5], "role": "sequence", **({"embedding": e} if e else {})} for c, e in SEQ.items()],
            {"name": "seq_len", "shape": [], "role": "sequence"},
        ],
    }
    cfg = ModelConfig.from_schema(schema, dim=16)
    assert cfg.sequence_features == SEQ and cfg.n_event_types == 6 and cfg.max_len == 5 and cfg.dim == 16


@pytest.mark.parametrize("encoder", ["transformer", "gru"])
def test_shapes_and_causality(encoder):
    model = _model(encoder)
    batch = _batch([[0, 0, 3, 4, 5], [6, 7, 8, 9, 2]])
    out = model(batch)
    assert out["hidden"].shape == (2, 5, 16) and out["action_logits"].shape == (2, 6)
    assert out["purchase_logit"].shape == (2,) and out["churn_logit"].shape == (2,)
    assert torch.isfinite(out["hidden"]).all()
    # Changing the future (position 4) must not change positions 0..3: the causal mask hides it.
    changed = _batch([[0, 0, 3, 4, 9], [6, 7, 8, 9, 1]])
    out2 = model(changed)
    torch.testing.assert_close(out["hidden"][:, :4], out2["hidden"][:, :4])
    assert not torch.allclose(out["hidden"][:, 4], out2["hidden"][:, 4])


@pytest.mark.parametrize("encoder", ["transformer", "gru"])
def test_padding_is_masked_left_or_right(encoder):
    model = _model(encoder)
    for items in ([[0, 0, 3, 4, 5]], [[3, 4, 5, 0, 0]]):
        clean = _batch(items)
        dirty = {k: v.clone() for k, v in clean.items()}
        pad = clean["item_idx_seq"] == 0
        dirty["category_idx_seq"][pad], dirty["price_seq"][pad], dirty["hour_seq"][pad] = 4, 99.0, 23  # garbage under padding
        a, b = model(clean)["hidden"], model(dirty)["hidden"]
        assert torch.count_nonzero(a[pad]) == 0  # padding outputs are exactly zero
        torch.testing.assert_close(a[~pad], b[~pad])  # valid positions never see what padding holds


def test_window_summary_exact_left_or_right_padding():
    """Last and previous session lengths, the gap buckets before them, sessions started, event-type shares."""
    seq = {**SEQ, "session_start_seq": "session_start", "dt_bucket_seq": "dt_bucket"}
    sizes = {"item": 10, "category": 5, "event_type": 6, "hour": 25, "session_start": 2, "dt_bucket": 11}
    cfg = ModelConfig(embedding_sizes=sizes, sequence_features=seq, max_len=6, n_event_types=6, dim=16, heads=2)
    batch = {
        # Left padded, the window opens mid-session; sessions start at positions 2 and 4.
        # Right padded: one session of three events.
        "item_idx_seq": torch.tensor([[0, 3, 4, 5, 6, 7], [3, 4, 5, 0, 0, 0]]),
        "session_start_seq": torch.tensor([[0, 0, 1, 0, 1, 0], [1, 0, 0, 0, 0, 0]]),
        "dt_bucket_seq": torch.tensor([[0, 3, 9, 4, 7, 2], [1, 5, 6, 0, 0, 0]]),
        "event_type_idx_seq": torch.tensor([[0, 2, 2, 3, 2, 4], [2, 2, 2, 0, 0, 0]]),
    }
    log1p = lambda x: float(torch.log1p(torch.tensor(float(x))))  # noqa: E731
    expected = torch.tensor([
        [log1p(2), log1p(2), 0.7, 0.9, log1p(2), 0, 0, 3 / 5, 1 / 5, 1 / 5, 0],
        [log1p(3), 0.0, 0.1, 0.0, log1p(1), 0, 0, 1, 0, 0, 0],
    ])  # fmt: skip
    assert window_summary_size(cfg) == 11
    torch.testing.assert_close(window_summary(batch, cfg), expected)
    assert window_summary_size(_model("gru").cfg) == 0  # a schema without the summary's inputs: heads as before


def test_next_targets_shift_and_label_at_last_position():
    seq = torch.tensor([[0, 3, 4, 5], [6, 7, 0, 0]])
    targets, mask = next_targets(seq, label=torch.tensor([9, 2]), label_mask=torch.tensor([1, 0]))
    assert targets.tolist() == [[0, 4, 5, 9], [7, 0, 0, 0]]
    assert mask.tolist() == [[False, True, True, True], [True, False, False, False]]  # censored label: not trained


def test_losses_mask_censored_and_sampled_softmax_is_finite():
    model = _model("gru")
    batch = _batch([[0, 3, 4, 5], [6, 7, 8, 2]])
    out = model(batch)
    targets, mask = next_targets(batch["item_idx_seq"], torch.tensor([9, 1]), torch.tensor([1, 1]))
    full = next_item_loss(model, out["hidden"], targets, mask)
    log_q = torch.log(torch.full((10,), 0.1))
    torch.manual_seed(1)
    sampled = next_item_loss(model, out["hidden"], targets, mask, num_negatives=5, log_q=log_q)
    assert torch.isfinite(full) and torch.isfinite(sampled) and full > 0 and sampled > 0
    logit = torch.tensor([10.0, -10.0, 3.0])
    # Only the first two rows count: the third is censored, whatever its label.
    assert masked_bce(logit, torch.tensor([1, 0, 0]), torch.tensor([1, 1, 0])).item() == pytest.approx(4.54e-5, rel=1e-2)
    assert masked_bce(logit, torch.tensor([1, 0, 1]), torch.tensor([0, 0, 0])).item() == 0.0
