"""ICE kernels: tensors in, tensors out, in the notation of CURE (arXiv 2505.12677) and ICE (arXiv 2511.18684).

ICE ("Now You See It, Now You Don't: Instant Concept Erasure", Das Biswas, Roy & Roy) states its parts but its
equations are not public. This module implements those parts with the choices documented below; each keeps a
property the abstract states: anisotropic energy-weighted erase and preserve subspaces, a unique closed-form overlap
projector, a convex objective with a unique analytical solution, and a dissociation operator written into the
text-conditioning layers.

Notation (per text space of dimension d; rows are embeddings at every token position):
  X_c [n, d]    concept rows (the concept in many contexts);  X_a [n, d]  the same prompts with the concept replaced
                by its anchor (or a neutral placeholder of the same word count), position for position.
  X_p [m, d]    preserve rows: prompts whose outputs must not change.
  V_e [d, k]    the erase basis: right singular vectors of X_c - X_a (CURE Eq. 2), truncated at an energy fraction
                (a seeded randomized SVD when the matrix is large).
  r_i           energy ratios sigma_i^2 / ||X_c - X_a||_F^2 (CURE).
  f(r; alpha)   spectral expansion alpha r / ((alpha - 1) r + 1) (CURE Eq. 4): f(0) = 0, f(1) = 1, in [0, 1].
  A = diag(f(r_e / r_e,1; alpha_e))  anisotropic erase weights (CURE Eq. 3). Choice: ratios relative to the dominant
                                     direction, so the leading concept direction is always fully weighted.
  B = Q diag(f(p / p_1; alpha_p)) Q^T  the anisotropic preserve operator seen from the erase subspace (eigen-pairs of
                                     the preserve rows' second moment in erase coordinates). Choice: compressing to
                                     the erase subspace first keeps the cost O(m d k), never a d x d decomposition.
  O = 2 A (A + B)^+ B                the overlap projector: the Anderson-Duffin parallel sum, the unique closed form of
                                     the projector onto range(A) ∩ range(B) for orthogonal projectors (their harmonic
                                     mean for soft ones). CURE's P_f P_r is its first-order surrogate.
  Objective, with Z = X_c V_e, Y = (X_c - X_a) V_e, Z_p = X_p V_e (strongly convex for mu > 0):
      J(M) = 1/2 sum ||A y - M z||^2 + s_p/2 sum ||M z_p||^2 + n s/2 (lam tr(M O M^T) + mu ||M||_F^2)
  Solution  M* = A Y^T Z (Z^T Z + s_p Z_p^T Z_p + n s (lam O + mu I))^{-1}   (unique; s = mean erase energy)
  Dissociation operator  D* = V_e M* V_e^T; every layer reading the space becomes W <- W (I - D*), i.e. the exact
  rank-k delta  Delta W = -(W V_e M*) V_e^T, stored as LoRA factors B = -W V_e M*, A = V_e^T.

Why a map and not a projector: a projector (I - P) only removes directions, and what remains of the concept prompt
still lies where the model draws the concept (on the demo world a projector left triangles in ~70% of samples); the
map sends the concept's states onto its anchor's, which is also what "map the concept onto an anchor" requires.
The preserve term (s_p) is UCE's (Gandikota et al. 2024), restricted here to the spectral erase subspace.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def spectral_expansion(r: torch.Tensor, alpha: float) -> torch.Tensor:
    """f(r; alpha) = alpha r / ((alpha - 1) r + 1), CURE Eq. 4 (alpha = 1: plain energy weighting)."""
    return alpha * r / ((alpha - 1.0) * r + 1.0)


def _randomized_svd(x: torch.Tensor, rank: int, power_iters: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Top `rank` singular values and right vectors of x (Halko, Martinsson & Tropp 2011), seeded for determinism."""
    g = torch.Generator(device="cpu").manual_seed(0)
    omega = torch.randn(x.shape[1], rank, generator=g).to(x)
    y = torch.linalg.qr(x @ omega)[0]
    for _ in range(power_iters):
        y = torch.linalg.qr(x @ torch.linalg.qr(x.T @ y)[0])[0]
    _, s, vh = torch.linalg.svd((y.T @ x).double(), full_matrices=False)
    return s, vh.T


def erase_basis(x_e: torch.Tensor, *, energy: float, max_rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right singular basis V_e [d, k] of X_e and its energy ratios r [k], keeping `energy` of the total.

    r_i = sigma_i^2 / ||X_e||_F^2 needs only the top singular values, so when X_e is large (1,000 rows of width
    4,096 at Flux size) a seeded randomized SVD of rank `max_rank` + 16 replaces the full decomposition.
    """
    x = x_e.float()
    total = torch.linalg.vector_norm(x).double().pow(2)
    if min(x.shape) > 2 * (max_rank + 16):
        s, v = _randomized_svd(x, max_rank + 16)
    else:
        _, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
        v = vh.T
    r = s.pow(2) / total
    k = int(torch.searchsorted(torch.cumsum(r, 0), torch.tensor(energy, dtype=r.dtype)).item()) + 1
    k = max(1, min(k, max_rank, int((s > s[0] * 1e-6).sum())))
    return v[:, :k].to(x_e.dtype).contiguous(), r[:k].to(x_e.dtype)


def overlap_projector(a: torch.Tensor, b: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """O = 2 A (A + B)^+ B, symmetrised: the parallel sum of two PSD operators (exact for projectors)."""
    eye = torch.eye(a.shape[0], dtype=torch.float64)
    a64, b64 = a.double(), b.double()
    o = 2.0 * a64 @ torch.linalg.solve(a64 + b64 + eps * eye, b64)
    return (0.5 * (o + o.T)).to(a.dtype)


@dataclass(frozen=True)
class Dissociation:
    """The parts of J(M) that neither eta nor the preserve weight changes, computed once per text space.

    In erase coordinates, with y = (1 + eta) (c - c_anchor) V, the closed form is
    M*(eta, s_p) = (1 + eta) A Y_0^T Z (Z^T Z + s_p Z_p^T Z_p + R)^{-1}: the Gram matrices, the overlap O and the
    regulariser R = n_e s (lam O + mu I) are shared by every setting, so a ladder of (eta, s_p) costs one small
    k x k solve per preserve weight instead of a decomposition per setting.
    """

    v_e: torch.Tensor  # [d, k] erase basis
    a: torch.Tensor  # [k, k] anisotropic erase weights (float64)
    g_zz: torch.Tensor
    g_yz: torch.Tensor  # Y_0^T Z for eta = 0
    g_pp: torch.Tensor
    reg: torch.Tensor

    def solve(self, eta: float = 0.0, preserve_scale: float = 1.0) -> torch.Tensor:
        """M* [k, k] for one setting."""
        m = _closed_form(self.a, self.g_zz, self.g_yz, self.g_pp, self.reg, preserve_scale)
        return ((1.0 + eta) * m).to(self.v_e.dtype)


def _closed_form(
    a: torch.Tensor, g_zz: torch.Tensor, g_yz: torch.Tensor, g_pp: torch.Tensor, reg: torch.Tensor, s_p: float
) -> torch.Tensor:
    """M* = A Y^T Z (Z^T Z + s_p Z_p^T Z_p + R)^{-1} in float64 (the system is symmetric)."""
    return a @ torch.linalg.solve(g_zz + s_p * g_pp + reg, g_yz.T).T


def dissociation_system(
    z_e: torch.Tensor, y_e: torch.Tensor, z_p: torch.Tensor, a: torch.Tensor, *, lam: float, mu: float, alpha_p: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Z^T Z, Y^T Z, Z_p^T Z_p, R) of the objective below, in float64."""
    k = z_e.shape[1]
    z, y, zp = z_e.double(), y_e.double(), z_p.double()
    g_zz = z.T @ z
    g_pp = zp.T @ zp
    scale = torch.trace(g_zz) / (k * len(z))
    p_eval, p_vec = torch.linalg.eigh(g_pp)
    p_ratio = (p_eval.clamp_min(0) / p_eval.clamp_min(0).max().clamp_min(1e-30)).clamp(0, 1)
    b = (p_vec * spectral_expansion(p_ratio, alpha_p)) @ p_vec.T
    o = overlap_projector(a.double(), b)
    reg = len(z) * scale * (lam * o + mu * torch.eye(k, dtype=torch.float64))
    return g_zz, y.T @ z, g_pp, reg


def solve_dissociation(
    z_e: torch.Tensor,
    y_e: torch.Tensor,
    z_p: torch.Tensor,
    a: torch.Tensor,
    *,
    lam: float,
    mu: float,
    alpha_p: float,
    preserve_scale: float = 1.0,
) -> torch.Tensor:
    """The dissociation map M* [k, k] in erase coordinates (rows: z = c V, targets y = (c - c_anchor) V).

    Objective (strongly convex for mu > 0, so the minimiser is unique; sums over rows as in UCE):
        J(M) = 1/2 sum_e ||A y - M z||^2 + preserve_scale/2 sum_p ||M z_p||^2
               + n_e s/2 (lam tr(M O M^T) + mu ||M||_F^2)
    with A the anisotropic erase weights, O the overlap (parallel sum) of the erase operator and the
    energy-weighted preserve operator, and s the mean erase energy per direction (so lam and mu are scale-free).
    Closed form: M* = A Y^T Z (Z^T Z + preserve_scale Z_p^T Z_p + n_e s (lam O + mu I))^{-1}.
    """
    g_zz, g_yz, g_pp, reg = dissociation_system(z_e, y_e, z_p, a, lam=lam, mu=mu, alpha_p=alpha_p)
    return _closed_form(a.double(), g_zz, g_yz, g_pp, reg, preserve_scale).to(z_e.dtype)


def dissociation(
    x_c: torch.Tensor,
    x_a: torch.Tensor,
    x_p: torch.Tensor,
    *,
    alpha_e: float,
    alpha_p: float,
    lam: float,
    mu: float = 1e-3,
    energy: float = 0.99,
    max_rank: int = 128,
) -> Dissociation:
    """The setting-free part of the ICE operator for one text space (`Dissociation.solve` gives M* per setting).

    Args:
        x_c: concept rows [n, d]; x_a: their position-aligned anchor rows [n, d]; x_p: preserve rows [m, d].
    """
    v_e, r_e = erase_basis(x_c - x_a, energy=energy, max_rank=max_rank)
    a = torch.diag(spectral_expansion(r_e / r_e.max(), alpha_e))
    z_e, y_e = x_c.float() @ v_e, (x_c - x_a).float() @ v_e
    g_zz, g_yz, g_pp, reg = dissociation_system(z_e, y_e, x_p.float() @ v_e, a, lam=lam, mu=mu, alpha_p=alpha_p)
    return Dissociation(v_e, a.double(), g_zz, g_yz, g_pp, reg)


def dissociation_operator(
    x_c: torch.Tensor,
    x_a: torch.Tensor,
    x_p: torch.Tensor,
    *,
    alpha_e: float,
    alpha_p: float,
    lam: float,
    mu: float = 1e-3,
    preserve_scale: float = 1.0,
    energy: float = 0.99,
    max_rank: int = 128,
    eta: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ICE operator D* = V_e M* V_e^T for one text space, as its factors (V_e [d, k], M* [k, k]).

    Args:
        x_c: concept rows [n, d]; x_a: their position-aligned anchor rows [n, d]; x_p: preserve rows [m, d].
        eta: dissociation past the anchor: concept rows are mapped onto x_a - eta (x_c - x_a), the embedding-space
            analogue of ESD's negative guidance (0: onto the anchor itself).
    """
    problem = dissociation(
        x_c, x_a, x_p, alpha_e=alpha_e, alpha_p=alpha_p, lam=lam, mu=mu, energy=energy, max_rank=max_rank
    )
    return problem.v_e, problem.solve(eta, preserve_scale)


def layer_delta(w: torch.Tensor, v_e: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA factors of W (I - V M V^T) - W: returns (A = V^T [k, d], B = -W V M [out, k])."""
    wv = w.to(v_e.dtype) @ v_e
    return v_e.T.contiguous(), -(wv @ m).contiguous()
