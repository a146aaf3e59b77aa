"""ICE kernels: the properties the method promises, on random data (no model needed)."""

from __future__ import annotations

import torch

from erasure_core.methods.ice.kernel import (
    dissociation,
    dissociation_operator,
    erase_basis,
    layer_delta,
    overlap_projector,
    solve_dissociation,
    spectral_expansion,
)


def test_spectral_expansion_endpoints_and_range() -> None:
    r = torch.linspace(0, 1, 11)
    for alpha in (1.0, 2.0, 5.0, 100.0):
        f = spectral_expansion(r, alpha)
        assert f[0] == 0 and torch.isclose(f[-1], torch.tensor(1.0))
        assert bool(((f >= 0) & (f <= 1)).all())
    assert torch.allclose(spectral_expansion(r, 1.0), r)


def test_erase_basis_is_orthonormal_and_spans_rows() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=g) @ torch.randn(3, 64, generator=g)  # rank 3
    v, r = erase_basis(x, energy=0.9999, max_rank=16)
    assert v.shape == (64, 3)
    assert torch.allclose(v.T @ v, torch.eye(3), atol=1e-4)
    assert torch.allclose(x @ v @ v.T, x, atol=1e-3)
    assert torch.isclose(r.sum(), torch.tensor(1.0), atol=1e-4)


def test_parallel_sum_is_intersection_for_projectors() -> None:
    # A projects on span(e0, e1), B on span(e1, e2): the intersection is span(e1).
    a = torch.diag(torch.tensor([1.0, 1.0, 0.0]))
    b = torch.diag(torch.tensor([0.0, 1.0, 1.0]))
    o = overlap_projector(a, b, eps=1e-9)
    assert torch.allclose(o, torch.diag(torch.tensor([0.0, 1.0, 0.0])), atol=1e-6)


def test_dissociation_solution_is_the_unique_minimiser() -> None:
    g = torch.Generator().manual_seed(1)
    k, n, m = 5, 40, 80
    z, y, zp = (torch.randn(r, k, generator=g, dtype=torch.float64) for r in (n, n, m))
    a = torch.diag(torch.rand(k, generator=g, dtype=torch.float64))
    lam, mu, sp = 0.7, 1e-2, 2.0
    mat = solve_dissociation(z, y, zp, a, lam=lam, mu=mu, alpha_p=8.0, preserve_scale=sp)
    # Rebuild the objective's pieces and check that its gradient vanishes at the solution.
    from erasure_core.methods.ice.kernel import overlap_projector, spectral_expansion

    p_eval, p_vec = torch.linalg.eigh(zp.T @ zp)
    b = (p_vec * spectral_expansion((p_eval / p_eval.max()).clamp(0, 1), 8.0)) @ p_vec.T
    o = overlap_projector(a, b)
    s = torch.trace(z.T @ z) / (k * n)
    grad = -(a @ y.T - mat @ z.T) @ z + sp * mat @ zp.T @ zp + n * s * (lam * mat @ o + mu * mat)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-8)


def test_operator_maps_concept_onto_anchor_and_leaves_preserve_rows() -> None:
    g = torch.Generator().manual_seed(2)
    d = 32
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    concept, shared = basis[:, 0], basis[:, 1]
    x_a = torch.outer(torch.randn(60, generator=g), shared) + 0.05 * torch.randn(60, d, generator=g)
    x_c = x_a + torch.outer(1 + 0.1 * torch.randn(60, generator=g), concept)
    x_p = torch.outer(torch.randn(400, generator=g), shared) + 0.05 * torch.randn(400, d, generator=g)
    v, m = dissociation_operator(x_c, x_a, x_p, alpha_e=100, alpha_p=8, lam=0.0, energy=0.999, max_rank=8)
    dmat = v @ m @ v.T
    # (I - D) x_c lands on the anchor rows: D x_c reproduces the concept displacement.
    moved = (x_c @ dmat.T - (x_c - x_a)).norm() / (x_c - x_a).norm()
    assert moved < 0.15
    # Preserve rows barely move.
    assert (x_p @ dmat.T).norm() / x_p.norm() < 0.05
    assert torch.linalg.matrix_norm(m.double(), ord=2) < 10
    # The overlap term only ever holds the edit back (lam trades erasure against the shared subspace).
    v4, m4 = dissociation_operator(x_c, x_a, x_p, alpha_e=100, alpha_p=8, lam=4.0, energy=0.999, max_rank=8)
    assert (x_c @ (v4 @ m4 @ v4.T).T).norm() < (x_c @ dmat.T).norm()


def test_layer_delta_is_exact() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(12, 20, generator=g)
    v = torch.linalg.qr(torch.randn(20, 4, generator=g))[0]
    m = torch.randn(4, 4, generator=g)
    a, b = layer_delta(w, v, m)
    assert torch.allclose(w + b @ a, w @ (torch.eye(20) - v @ m @ v.T), atol=1e-5)


def test_eta_pushes_the_concept_past_its_anchor() -> None:
    """eta > 0 maps x_c onto x_a - eta (x_c - x_a): away from the concept, past the anchor (ESD-style)."""
    g = torch.Generator().manual_seed(3)
    d = 32
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    x_a = torch.outer(torch.randn(60, generator=g), basis[:, 1]) + 0.05 * torch.randn(60, d, generator=g)
    x_c = x_a + torch.outer(1 + 0.1 * torch.randn(60, generator=g), basis[:, 0])
    x_p = torch.outer(torch.randn(400, generator=g), basis[:, 1]) + 0.05 * torch.randn(400, d, generator=g)
    for eta in (0.0, 2.0):
        v, m = dissociation_operator(x_c, x_a, x_p, alpha_e=100, alpha_p=8, lam=0.0, max_rank=8, eta=eta)
        edited = x_c - x_c @ (v @ m @ v.T).T
        target = x_a - eta * (x_c - x_a)
        assert (edited - target).norm() / (x_c - x_a).norm() < 0.15 * (1 + eta)
        assert ((edited - x_a) * (x_c - x_a)).sum() <= 0.05 * (x_c - x_a).pow(2).sum()  # not on the concept's side


def test_every_setting_of_a_ladder_solves_from_one_factorisation() -> None:
    """`dissociation(...).solve(eta, s_p)` equals the closed form built from scratch for that setting, with the
    target scaled by (1 + eta) before the solve: the ladder shares the basis and Gram matrices, nothing else."""
    g = torch.Generator().manual_seed(4)
    x_a = torch.randn(80, 24, generator=g)
    x_c = x_a + torch.randn(80, 3, generator=g) @ torch.randn(3, 24, generator=g)
    x_p = torch.randn(300, 24, generator=g)
    kwargs = {"alpha_e": 100.0, "alpha_p": 8.0, "lam": 0.25, "mu": 1e-3, "energy": 0.999, "max_rank": 8}
    problem = dissociation(x_c, x_a, x_p, **kwargs)
    v = problem.v_e
    a = problem.a.float()
    for eta, s_p in ((0.0, 64.0), (1.0, 64.0), (2.0, 16.0), (4.0, 16.0)):
        direct = solve_dissociation(
            x_c @ v, (1 + eta) * (x_c - x_a) @ v, x_p @ v, a, lam=0.25, mu=1e-3, alpha_p=8.0, preserve_scale=s_p
        )
        assert torch.allclose(problem.solve(eta, s_p), direct, rtol=1e-4, atol=1e-6)
        v_op, m_op = dissociation_operator(x_c, x_a, x_p, **kwargs, eta=eta, preserve_scale=s_p)
        assert torch.equal(v_op, v) and torch.allclose(m_op, direct, rtol=1e-4, atol=1e-6)
