"""AdapterHost: exact attach/detach, composition by addition, validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from erasure_core.adapters import AdapterHost, layer_hash
from erasure_core.artifacts import ErasureArtifact, LowRankDelta
from erasure_core.errors import AdapterNotFoundError, IncompatibleAdapterError, NoMatchingModuleError


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 6)
        self.b = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def _erasure(seed: int, module: str = "a", rank: int = 2, shape: tuple[int, int] = (6, 8)) -> ErasureArtifact:
    g = torch.Generator().manual_seed(seed)
    out_f, in_f = shape
    delta = LowRankDelta(torch.randn(rank, in_f, generator=g), torch.randn(out_f, rank, generator=g))
    return ErasureArtifact({module: delta}, {"base_model": {"layer_hash": "h"}})


@pytest.fixture()
def model() -> Tiny:
    torch.manual_seed(0)
    return Tiny().eval()


def test_detach_and_empty_set_are_bit_identical(model: Tiny) -> None:
    x = torch.randn(5, 8)
    base = model(x)
    host = AdapterHost.for_model(model)
    host.attach("e1", _erasure(1))
    host.activate(["e1"])
    assert not torch.equal(model(x), base)
    host.activate([])
    assert torch.equal(model(x), base)
    host.activate(["e1"])
    host.detach("e1")
    assert host.active == ()
    assert torch.equal(model(x), base)
    host.close()
    assert torch.equal(model(x), base)


def test_sets_compose_by_addition(model: Tiny) -> None:
    x = torch.randn(5, 8)
    host = AdapterHost.for_model(model)
    e1, e2 = _erasure(1), _erasure(2)
    host.attach("e1", e1)
    host.attach("e2", e2)
    host.activate(["e2", "e1"])
    got = model.a(x)
    want = nn.functional.linear(x, model.a.weight + e1.deltas["a"].dense() + e2.deltas["a"].dense(), model.a.bias)
    assert torch.allclose(got, want, atol=1e-5)
    assert host.active == ("e1", "e2")


def test_validation(model: Tiny) -> None:
    host = AdapterHost.for_model(model)
    assert host.attach("e1", _erasure(1)) is True
    assert host.attach("e1", _erasure(1)) is False
    with pytest.raises(AdapterNotFoundError):
        host.activate(["nope"])
    with pytest.raises(IncompatibleAdapterError):
        host.attach("bad-shape", _erasure(3, shape=(6, 7)))
    with pytest.raises(NoMatchingModuleError):
        host.attach("bad-module", _erasure(3, module="missing"))
    with pytest.raises(IncompatibleAdapterError, match="another base model"):
        host.attach("other-base", _erasure(3), expected_hash="not-h")
    assert host.attached == ("e1",)


def test_layer_hash_tracks_weights(model: Tiny) -> None:
    h = layer_hash(model, ["a"])
    assert h == layer_hash(model, ["a"])
    with torch.no_grad():
        model.a.weight[0, 0] += 1
    assert layer_hash(model, ["a"]) != h


def test_a_guard_acts_on_the_output_after_every_other_delta(model: Tiny) -> None:
    """Guarded, erasures' joint guard replaces their own deltas on the guard's modules and maps what the layer
    produced (y - b, other erasures' deltas included): y <- y + G_B G_A (y - b). Their deltas elsewhere still
    apply. A guard is detached with any erasure it covers."""
    x = torch.randn(5, 8)
    host = AdapterHost.for_model(model)
    policy = ErasureArtifact({**_erasure(1).deltas, "b": _erasure(2, "b", shape=(4, 6)).deltas["b"]}, {})
    tenant = _erasure(3)
    host.attach("policy", policy)
    host.attach("tenant", tenant)
    g = torch.Generator().manual_seed(4)
    guard = LowRankDelta(torch.randn(2, 6, generator=g), torch.randn(6, 2, generator=g))
    with pytest.raises(AdapterNotFoundError):
        host.activate(["policy", "tenant"], ["policy"])  # no guard attached yet
    host.attach_guard(["policy"], {"a": guard})

    host.activate(["policy", "tenant"], ["policy"])
    with torch.no_grad():
        produced = x @ (model.a.weight + tenant.deltas["a"].dense()).T
        hidden = produced + model.a.bias + produced @ guard.dense().T
        out = torch.tanh(hidden) @ (model.b.weight + policy.deltas["b"].dense()).T + model.b.bias
        torch.testing.assert_close(model(x), out, rtol=1e-5, atol=1e-5)
    assert host.guarded == ("policy",) and host.fused_nbytes > 0

    host.activate(["policy", "tenant"])  # unguarded: plain addition, as before
    with torch.no_grad():
        hidden = x @ (model.a.weight + tenant.deltas["a"].dense() + policy.deltas["a"].dense()).T + model.a.bias
        out = torch.tanh(hidden) @ (model.b.weight + policy.deltas["b"].dense()).T + model.b.bias
        torch.testing.assert_close(model(x), out, rtol=1e-5, atol=1e-5)
    host.detach("policy")
    assert host.guards == () and host.active == ("tenant",)
    host.activate([])
    host.close()
