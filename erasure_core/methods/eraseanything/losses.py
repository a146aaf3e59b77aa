"""EraseAnything / EraseAnything++ loss kernels: tensors in, tensors out.

Gao et al., "EraseAnything: Enabling Concept Erasure in Rectified Flow Transformers" (ICML 2025, arXiv 2412.20413)
and Fan et al., "EraseAnything++" (arXiv 2603.00978). Notation follows the papers and their public code:
  v0, vp    velocities of the frozen model for the anchor and the concept prompt at the same x_t;
  vn        velocity of the model being trained for the concept prompt;
  eta       negative-guidance strength (ESD);
  tau       InfoNCE temperature (0.07);
  w         the EUPMU weight balancing retain (L_r) and forget (L_f) losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def esd_target(v0: torch.Tensor, vp: torch.Tensor, eta: float) -> torch.Tensor:
    """ESD negative guidance on velocities: v0 - eta (vp - v0)."""
    return v0 - eta * (vp - v0)


def esd_loss(vn: torch.Tensor, v0: torch.Tensor, vp: torch.Tensor, eta: float) -> torch.Tensor:
    return F.mse_loss(vn, esd_target(v0, vp, eta).detach())


def flow_matching_loss(pred: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Rectified-flow loss ||v - (noise - x0)||^2 (the retain term on concept images)."""
    return F.mse_loss(pred, noise - x0)


def attention_suppression(probs: torch.Tensor, keyword_mask: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of the Frobenius norm of the attention paid to the concept tokens.

    Args:
        probs: [B, H, S, S] joint-attention probabilities (keys on the last axis; text tokens first).
        keyword_mask: [B, S] bool, True at the concept tokens' key columns.
    """
    mass = probs * keyword_mask[:, None, None, :].to(probs.dtype)
    return mass.flatten(1).norm(dim=1).sum()


def attention_signature(probs: torch.Tensor, keyword_mask: torch.Tensor, n_text: int) -> torch.Tensor:
    """Attention that image queries pay to the keyword, per head and query: [B, H * N_img] (mean over keyword
    tokens), the "attention column at the keyword index" the contrastive loss compares."""
    mask = keyword_mask.to(probs.dtype)
    cols = (probs[:, :, n_text:, :] * mask[:, None, None, :]).sum(-1) / mask.sum(-1).clamp_min(1)[:, None, None]
    return cols.flatten(1)


def reverse_self_contrastive(
    anchor: torch.Tensor, synonym: torch.Tensor, irrelevant: torch.Tensor, tau: float = 0.07
) -> torch.Tensor:
    """log p(anchor | synonym) under InfoNCE with the irrelevant concepts as the alternatives, to be minimised.

    = logsumexp(sim(syn, anchor)/tau) - logsumexp(sim(syn, [anchor, irr_1..K])/tau): pushes the erased word's
    attention signature away from its synonym's, towards unrelated concepts (EraseAnything Sec. 3.3).

    Args: anchor, synonym [B, F]; irrelevant [B, K, F].
    """
    syn = F.normalize(synonym, dim=-1)
    candidates = F.normalize(torch.cat([anchor[:, None], irrelevant], dim=1), dim=-1)
    logits = (candidates @ syn[:, :, None]).squeeze(-1) / tau
    return (logits[:, 0] - torch.logsumexp(logits, dim=1)).mean()


def eupmu_combine(
    loss_r: torch.Tensor, loss_f: torch.Tensor, w: float, m_r: float = 0.0, m_f: float = 0.0
) -> torch.Tensor:
    """EUPMU objective: w/(1+w) (L_r - m_r) + 1/(1+w) (L_f - m_f); the retain term is dropped while w < 0."""
    if w < 0:
        return loss_f - m_f
    return (w / (1 + w)) * (loss_r - m_r) + (1 / (1 + w)) * (loss_f - m_f)


def eupmu_weight_gradient(retain_before: float, retain_after: float, lr: float, eps: float = 0.003) -> float:
    """The signal fed to w: (L_r^before - L_r^after) / lr - eps. Negative when the retain loss falls slower than
    the required rate, so a descent step on w increases it ("implicit gradient surgery")."""
    return (retain_before - retain_after) / lr - eps


def velocity_preservation(v: torch.Tensor, v_frozen: torch.Tensor) -> torch.Tensor:
    """||v - v_frozen||^2 on prompts to preserve: the adapter must not change what the model does for them (this
    project's addition; the papers' retain terms are on the concept's own prompt only)."""
    return F.mse_loss(v, v_frozen.detach())


def frame_errors(vn: torch.Tensor, target: torch.Tensor, token_frames: torch.Tensor) -> torch.Tensor:
    """Mean squared error of vn against the target per latent frame: [T] (the frame of each packed token is
    `token_frames` [S]; every frame has the same number of tokens)."""
    err = (vn.float() - target.float()).pow(2).mean(dim=(0, 2))  # [S]
    frames = int(token_frames.max()) + 1
    return torch.zeros(frames, device=err.device).index_add(0, token_frames.to(err.device), err) / (
        torch.bincount(token_frames, minlength=frames).to(err)
    )


def anchored_esd_loss(
    vn: torch.Tensor,
    v0: torch.Tensor,
    vp: torch.Tensor,
    eta: float,
    token_frames: torch.Tensor,
    temporal_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor-and-propagate ESD for video (EraseAnything++ Sec. on video; our reading of it, see below).

    The paper initialises the erasure on reference frames and enforces it across the following frames, because a
    concept suppressed early leaks back later; its public code has no separate path for it. Here:
      anchor    L_a = ESD on the tokens of latent frame 0 (the causal VAE encodes the first video frame alone
                into it): the erasure objective anchored on the first frame;
      temporal  L_t = mean over later latent frames k >= 1 of ESD on frame k's tokens: the same target enforced on
                every later frame at its own tokens, so no frame can keep the concept while the first loses it.
    Returns (L_a + temporal_weight * L_t, the per-frame errors [T], detached). temporal_weight 0 trains the anchor
    frame alone (the ablation); 1 weighs the first frame as much as all later frames together.
    """
    per_frame = frame_errors(vn, esd_target(v0, vp, eta).detach(), token_frames)
    loss = per_frame[0]
    if len(per_frame) > 1 and temporal_weight > 0:
        loss = loss + temporal_weight * per_frame[1:].mean()
    return loss, per_frame.detach()
