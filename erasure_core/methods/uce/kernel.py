"""UCE closed form (Gandikota et al., "Unified Concept Editing in Diffusion Models", WACV 2024, arXiv 2308.14761).

W* = (lambda W_old + s_e sum_i v_i* c_i^T + s_p sum_j (W_old c_j) c_j^T) (lambda I + s_e sum_i c_i c_i^T
      + s_p sum_j c_j c_j^T)^{-1},   v_i* = W_old c_guide(i).
It minimises sum_E ||W c_i - v_i*||^2 + sum_P ||W c_j - W_old c_j||^2 + lambda ||W - W_old||_F^2.
Used here as the baseline that ICE is compared with in bench/ice.py.
"""

from __future__ import annotations

import torch


def uce_solve(
    w_old: torch.Tensor,
    c_erase: torch.Tensor,
    c_guide: torch.Tensor,
    c_preserve: torch.Tensor,
    *,
    lamb: float = 0.5,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
) -> torch.Tensor:
    """Returns W* [out, d]. Rows of c_erase/c_guide are paired [n_e, d]; c_preserve is [n_p, d]."""
    if c_erase.shape != c_guide.shape:
        raise ValueError(f"c_erase has shape {tuple(c_erase.shape)} but c_guide {tuple(c_guide.shape)}; expected equal")
    w = w_old.double()
    ce, cg, cp = c_erase.double(), c_guide.double(), c_preserve.double()
    d = w.shape[1]
    v_star = cg @ w.T
    mat1 = lamb * w + erase_scale * v_star.T @ ce + preserve_scale * (cp @ w.T).T @ cp
    mat2 = lamb * torch.eye(d, dtype=torch.float64) + erase_scale * ce.T @ ce + preserve_scale * cp.T @ cp
    return torch.linalg.solve(mat2, mat1.T).T.to(w_old.dtype)  # mat1 @ mat2^{-1}, mat2 symmetric
