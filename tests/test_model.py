"""The sequence model on tiny literal inputs: shapes and the semantic properties that matter."""

from __future__ import annotations

import math

import pytest
import torch

from shopseq.training.model import MultiTaskModel, ModelConfig, masked_bce, next_item_loss, next_targets, window_scores, window_scores_at, window_summary, window_summary_size


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


def _repeat_model(repeat: str = "recency_type", inputs: tuple[str, ...] | None = None) -> MultiTaskModel:
    torch.manual_seed(0)
    sizes = {"item": 10, "category": 5, "event_type": 6, "hour": 25}
    cfg = ModelConfig(embedding_sizes=sizes, sequence_features=SEQ, max_len=5, n_event_types=6, dim=16, heads=2, dropout=0.0, repeat=repeat, inputs=inputs)
    model = MultiTaskModel(cfg).eval()
    if model.repeat is None:
        return model
    with torch.no_grad():  # w[age, type] = 10 * (age + 1) + type: every (recency, type) pair has its own value
        ages = torch.arange(5, dtype=torch.float).unsqueeze(1)
        model.repeat.weight.copy_(10 * (ages + 1) + torch.arange(model.repeat.weight.shape[1]).float() if repeat == "recency_type" else 10 * (ages + 1))
    return model


def test_repeat_bias_adds_the_learned_weight_to_window_items_only():
    """Item 3 at ages 3 (type 2) and 1 (type 4), item 5 at age 0 (type 3); OOV (1) and padding (0) get nothing."""
    model = _repeat_model()
    batch = _batch([[0, 3, 1, 3, 5], [7, 8, 0, 0, 0]])  # left padded; right padded
    batch["event_type_idx_seq"] = torch.tensor([[0, 2, 2, 4, 3], [5, 2, 0, 0, 0]])
    out = model(batch)
    bias = model.item_scores(out["hidden_last"], batch["item_idx_seq"], out["repeat_last"]) - model.item_scores(out["hidden_last"])
    expected = torch.zeros(2, 10)
    expected[0, 3] = (10 * 4 + 2) + (10 * 2 + 4)
    expected[0, 5] = 10 * 1 + 3
    expected[1, 8] = 10 * 1 + 2  # right padding: the last valid position (1) is the query
    expected[1, 7] = 10 * 2 + 5
    torch.testing.assert_close(bias, expected)
    plain = _repeat_model("recency")
    out = plain(batch)
    assert out["repeat_last"][0].tolist() == [0.0, 40.0, 0.0, 20.0, 10.0]  # one weight per recency, OOV and padding 0


def test_repeat_bias_is_causal_at_every_position():
    """Seen from position t, only positions <= t count; editing the future changes nothing at t."""
    model = _repeat_model("recency")
    batch = _batch([[0, 3, 4, 3, 5]])
    w = model.repeat_weights(batch)[0]  # [query t, window p]
    expected = torch.tensor([[0, 0, 0, 0, 0], [0, 10, 0, 0, 0], [0, 20, 10, 0, 0], [0, 30, 20, 10, 0], [0, 40, 30, 20, 10]], dtype=torch.float)
    torch.testing.assert_close(w, expected)
    future = _batch([[0, 3, 4, 3, 9]])
    targets = torch.tensor([[0, 4, 3, 5, 6]])
    for t in range(1, 4):
        mask = torch.zeros(1, 5, dtype=torch.bool)
        mask[0, t] = True
        losses = []
        for b in (batch, future):
            out = model(b)
            losses.append(next_item_loss(model, out["hidden"], targets, mask, items=b["item_idx_seq"], repeat=model.repeat_weights(b)))
        torch.testing.assert_close(losses[0], losses[1])


def test_window_scores_at_matches_the_catalogue_row():
    torch.manual_seed(3)
    items = torch.randint(0, 12, (6, 7))
    weights = torch.randn(6, 7)
    cand = torch.randint(0, 12, (6, 9))
    torch.testing.assert_close(window_scores_at(items, weights, cand), window_scores(items, weights, 12).gather(1, cand))


def test_sampled_softmax_sees_the_repeat_bias_and_trains_it():
    model = _repeat_model("recency")
    batch = _batch([[0, 3, 4, 3, 5], [6, 7, 8, 6, 2]])
    out = model(batch)
    targets, mask = next_targets(batch["item_idx_seq"], torch.tensor([3, 6]), torch.tensor([1, 1]))
    log_q = torch.log(torch.full((10,), 0.1))
    torch.manual_seed(1)
    loss = next_item_loss(model, out["hidden"], targets, mask, 5, log_q, batch["item_idx_seq"], model.repeat_weights(batch))
    loss.backward()
    assert torch.isfinite(loss) and model.repeat.weight.grad is not None and model.repeat.weight.grad.abs().sum() > 0


def test_encoder_reads_only_its_inputs():
    """inputs=(event types,): hour and price under valid positions no longer change the states."""
    model = _repeat_model("none", inputs=("event_type_idx_seq",))
    batch = _batch([[0, 3, 4, 3, 5]])
    other = {k: v.clone() for k, v in batch.items()}
    other["hour_seq"][0, 2:] = 7
    other["price_seq"][0, 2:] = 3.0
    torch.testing.assert_close(model(batch)["hidden"], model(other)["hidden"])
    other["event_type_idx_seq"][0, 2:] = 4
    assert not torch.allclose(model(batch)["hidden"], model(other)["hidden"])


def test_mixture_scores_are_the_log_of_gate_times_window_plus_rest_times_softmax():
    """repeat: mixture, zero weights: the window distribution is uniform over real-item positions; gate 0.75."""
    model = _repeat_model("mixture")
    with torch.no_grad():
        model.repeat.weight.zero_()
        model.repeat.gate.weight.zero_()
        model.repeat.gate.bias.fill_(math.log(3.0))  # sigmoid(log 3) = 0.75
    batch = _batch([[0, 3, 1, 3, 5], [0, 0, 0, 1, 1]])  # item 3 twice, 5 once, OOV once | only OOV: no repeat mode
    out = model(batch)
    scores = model.item_scores(out["hidden_last"], batch["item_idx_seq"], out["repeat_last"])
    softmax = torch.softmax(model.item_scores(out["hidden_last"]), dim=-1)
    window = torch.zeros(2, 10)
    window[0, 3], window[0, 5] = 2 / 3, 1 / 3
    expected = torch.stack([0.75 * window[0] + 0.25 * softmax[0], softmax[1]])
    torch.testing.assert_close(scores.exp(), expected)
    torch.testing.assert_close(scores.exp().sum(-1), torch.ones(2))
    assert out["repeat_last"][0, 0].item() == float("-inf") and out["repeat_last"][0, 2].item() == float("-inf")  # padding, OOV


def test_mixture_trains_its_gate_and_refuses_a_sampled_softmax():
    model = _repeat_model("mixture").train()
    batch = _batch([[0, 3, 4, 3, 5], [6, 7, 8, 6, 2]])
    out = model(batch)
    targets, mask = next_targets(batch["item_idx_seq"], torch.tensor([3, 6]), torch.tensor([1, 1]))
    loss = next_item_loss(model, out["hidden"], targets, mask, items=batch["item_idx_seq"], repeat=model.repeat_weights(batch))
    loss.backward()
    assert torch.isfinite(loss) and model.repeat.gate.weight.grad.abs().sum() > 0 and model.repeat.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="repeat: mixture needs the full softmax"):
        next_item_loss(model, out["hidden"], targets, mask, 5, torch.log(torch.full((10,), 0.1)), batch["item_idx_seq"], model.repeat_weights(batch))
