"""EraseAnything++ loss kernels: the properties each term is meant to have."""

from __future__ import annotations

import torch

from erasure_core.methods.eraseanything import losses


def test_esd_target_moves_away_from_the_concept() -> None:
    v0, vp = torch.zeros(3), torch.ones(3)
    assert torch.equal(losses.esd_target(v0, vp, eta=1.0), -torch.ones(3))
    assert losses.esd_loss(-torch.ones(3), v0, vp, 1.0) == 0


def test_attention_suppression_counts_only_keyword_columns() -> None:
    probs = torch.softmax(torch.randn(2, 3, 5, 5), dim=-1)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    assert losses.attention_suppression(probs, mask) == 0
    mask[:, 1] = True
    assert torch.isclose(losses.attention_suppression(probs, mask), probs[..., 1].flatten(1).norm(dim=1).sum())


def test_contrastive_loss_prefers_synonym_far_from_anchor() -> None:
    anchor = torch.tensor([[1.0, 0.0]])
    irrelevant = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    near = losses.reverse_self_contrastive(anchor, torch.tensor([[1.0, 0.1]]), irrelevant)
    far = losses.reverse_self_contrastive(anchor, torch.tensor([[0.1, 1.0]]), irrelevant)
    assert far < near <= 0


def test_eupmu_weighting_and_its_update_signal() -> None:
    lr, lf = torch.tensor(2.0), torch.tensor(4.0)
    assert losses.eupmu_combine(lr, lf, w=0.0) == 4.0
    assert losses.eupmu_combine(lr, lf, w=-0.5) == 4.0  # retain term dropped while w < 0
    assert torch.isclose(losses.eupmu_combine(lr, lf, w=1.0), torch.tensor(3.0))
    # Retain loss not falling fast enough -> negative signal -> an Adam descent step raises w.
    assert losses.eupmu_weight_gradient(1.0, 1.0, lr=1e-3) < 0
    assert losses.eupmu_weight_gradient(1.0, 0.9, lr=1e-3) > 0
