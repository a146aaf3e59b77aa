"""The adapter manager as a state machine, the scheduler's grouping and fairness, and backpressure (429)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from erasure_core.adapters import ErasureSet
from erasure_core.artifacts import ErasureArtifact, LowRankDelta
from erasure_core.engines import GenerationParams
from service.errors import CapacityError, ErasureNotReadyError
from service.metrics import Metrics
from service.pipelines import PipelineHandle, PipelinePool
from service.runtime.adapter_manager import AdapterManager
from service.runtime.scheduler import GenerationJob, GenerationScheduler, next_turn
from service.store import ErasureRecord, ErasureStore, JobStatus, new_id

from .conftest import LiveServer

RANK = 4


def synthetic_erasure(store: ErasureStore, handle: PipelineHandle, seed: int) -> tuple[str, int]:
    """A stored erasure with small random deltas on the demo model's text layers; returns (id, bytes)."""
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for name in handle.engine.family.edited_layers:
        out_f, in_f = handle.engine.pipe.transformer.get_submodule(name).weight.shape
        deltas[name] = LowRankDelta(
            0.01 * torch.randn(RANK, in_f, generator=gen), torch.randn(out_f, RANK, generator=gen)
        )
    artifact = ErasureArtifact(deltas, {"method": "test", "base_model": {"layer_hash": handle.engine.layer_hash}})
    record = store.add(ErasureRecord(id=new_id(), tenant="t", model="flux", method="test", spec={"seed": seed}))
    store.save_artifact(record.id, artifact)
    return record.id, artifact.nbytes


def _generate(handle: PipelineHandle, erasures: tuple[str, ...] = ()) -> torch.Tensor:
    return handle.engine.generate(["a red circle"], [5], GenerationParams(steps=2), erasures=erasures)


def test_adapter_manager_state_machine(demo_pool: PipelinePool, tmp_path: Path) -> None:
    handle = demo_pool.get("flux")
    store = ErasureStore(tmp_path)
    store.recover()
    (a, size), (b, _), (c, _), (d, _) = (synthetic_erasure(store, handle, s) for s in range(4))
    metrics = Metrics()
    manager = AdapterManager(handle, store, budget_bytes=int(2.5 * size), metrics=metrics)
    with manager.use(()):
        base = _generate(handle)

    with manager.use([a]) as active:
        assert active.swapped and manager.active == (a,) and manager.resident == (a,)
        with_a = _generate(handle, (a,))
    with manager.use([a]) as active:
        assert not active.swapped
    assert (metrics.cache_misses.value(model="flux"), metrics.cache_hits.value(model="flux")) == (1, 1)
    with manager.use([b]):
        assert manager.resident == (a, b)
    with manager.use([c]):  # over budget: the least recently used (a) goes, and is detached from the model
        assert manager.resident == (b, c) and a not in handle.engine.host.attached
    assert metrics.cache_evictions.value(model="flux") == 1

    with pytest.raises(CapacityError), manager.use([a, b, c]):
        pass  # three never fit, whatever is evicted; nothing stays pinned afterwards
    assert all(entry.pins == 0 for entry in manager._entries.values())
    with pytest.raises(CapacityError), manager.use([a, b]):
        pass  # two fit, but not with the fused copy a set of two needs: that copy counts against the budget too
    manager.budget_bytes = int(4.5 * size)
    with manager.use([a, b]):
        assert set(manager.resident) == {a, b}
        assert manager.resident_bytes == 4 * size, "two erasures plus their fused copy"
        assert not torch.equal(_generate(handle, (a, b)), with_a)
    with manager.use([a]):
        assert torch.equal(_generate(handle, (a,)), with_a)

    assert manager.remove(b) and not manager.remove(b)
    store.artifact_path(d).write_bytes(b"not a safetensors file")
    with pytest.raises(ErasureNotReadyError), manager.use([d]):
        pass
    assert store.get(d).status == JobStatus.failed

    manager.close()
    assert manager.resident == () and handle.engine.host.active == ()
    assert not {a, b, c, d} & set(handle.engine.host.attached)
    assert torch.equal(_generate(handle), base), "closing the manager must restore the base model exactly"


def test_scheduler_prefers_the_active_set_with_bounded_unfairness(demo_pool: PipelinePool, tmp_path: Path) -> None:
    handle = demo_pool.get("flux")
    store = ErasureStore(tmp_path)
    store.recover()
    manager = AdapterManager(handle, store, budget_bytes=2**20, metrics=Metrics())

    async def scenario() -> list[tuple[str, ...]]:
        scheduler = GenerationScheduler(manager, Metrics(), max_queue=100, max_skips=2)
        params = GenerationParams(steps=1)
        for key in [("x",), (), (), (), (), ()]:
            scheduler._pending.append(GenerationJob(key, ["p"], [0], params))
        return [scheduler.pick().erasures for _ in range(6)]

    with manager.use(()):
        order = asyncio.run(scenario())
    # Active set is (): the () jobs go first, but ("x",) is passed over at most twice.
    assert order == [(), (), ("x",), (), (), ()]


def test_a_full_queue_of_mixed_sets_is_served_in_turns() -> None:
    """72 requests over 8 sets queued at once: each set gets turns of at most max_skips + 1 requests, so the pipeline
    swaps about once per set, and no request waits for more than max_skips requests per request older than it."""
    rng = random.Random(7)
    arrivals = [(ErasureSet([f"er_{rng.randrange(8)}"]), i) for i in range(72)]
    max_skips = 8
    pending, active, ahead, order = list(arrivals), ErasureSet(), 0, []
    while pending:
        index, ahead = next_turn([key for key, _ in pending], active, ahead, max_skips)
        active, arrived = pending.pop(index)
        order.append((active, arrived))
    keys = [key for key, _ in order]
    swaps = sum(1 for before, after in zip([ErasureSet(), *keys], keys, strict=False) if before != after)
    assert swaps <= 16, f"{swaps} swaps for 72 requests over 8 sets"
    for position, (_, arrived) in enumerate(order):
        jumped = sum(1 for _, other in order[:position] if other > arrived)  # later arrivals served first
        assert jumped <= max_skips * (arrived + 1), (arrived, jumped)


def test_runs_of_the_same_set_swap_once(start_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = start_server(tmp_path)
    with server.client() as client:
        ids = [client.post("/v1/erasures", json={"concept": c}).json()["id"] for c in ("circle", "square")]

    async def fire() -> list[int]:
        async with server.async_client() as client:
            # A slow request first, so the 16 below are all queued when the worker next picks.
            blocker = asyncio.ensure_future(client.post("/v1/images/generations", json={"prompt": "x", "steps": 100}))
            await asyncio.sleep(0.3)
            bodies = [{"prompt": "a red circle", "seed": i, "steps": 2, "erasures": [ids[i % 2]]} for i in range(16)]
            responses = await asyncio.gather(*(client.post("/v1/images/generations", json=b) for b in bodies))
            await blocker
        return [r.status_code for r in responses]

    before = server.runtime.metrics.swaps.value(model="flux")
    assert asyncio.run(fire()) == [200] * 16
    swaps = server.runtime.metrics.swaps.value(model="flux") - before
    server.stop()
    # () -> first set -> second set, plus one if the blocker itself swapped: never one swap per request.
    assert swaps <= 3, f"16 requests alternating between two sets made {swaps} swaps"


def test_full_queue_answers_429(start_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = start_server(tmp_path, max_queue=1)

    async def fire() -> list:
        async with server.async_client() as client:
            body = {"prompt": "a blue square", "steps": 10}
            return await asyncio.gather(*(client.post("/v1/images/generations", json=body) for _ in range(12)))

    responses = asyncio.run(fire())
    metrics_text = server.runtime.metrics.render()
    server.stop()
    refused = [r for r in responses if r.status_code == 429]
    assert refused and any(r.status_code == 200 for r in responses)
    assert all(r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"] for r in refused)
    assert 'erasure_overloaded_total{model="flux"}' in metrics_text
