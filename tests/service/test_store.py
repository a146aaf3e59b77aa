"""The erasure store: atomic writes, crash recovery, and that a damaged erasure is never served."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from erasure_core.artifacts import ErasureArtifact, LowRankDelta
from erasure_core.errors import ArtifactError
from service.errors import ErasureNotFoundError
from service.store import ErasureRecord, ErasureStore, JobStatus, is_valid_id, new_id


def make_artifact(seed: int = 0, rank: int = 4) -> ErasureArtifact:
    gen = torch.Generator().manual_seed(seed)
    delta = LowRankDelta(torch.randn(rank, 16, generator=gen), torch.randn(8, rank, generator=gen))
    return ErasureArtifact({"context_embedder": delta}, {"method": "ice", "base_model": {"layer_hash": "x"}})


def add_record(store: ErasureStore, tenant: str = "t") -> ErasureRecord:
    record = ErasureRecord(id=new_id(), tenant=tenant, model="flux", method="ice", spec={"concept": "c"})
    return store.add(record)


def test_ids_are_prefixed_random_hex() -> None:
    ids = {new_id() for _ in range(100)}
    assert len(ids) == 100 and all(is_valid_id(i) for i in ids)
    for bad in ("", "er_", "er_XYZ", "../../etc/passwd", "er_" + "0" * 23, "er_" + "0" * 25, "ab_" + "0" * 24):
        assert not is_valid_id(bad)


def test_ids_with_a_trailing_newline_are_invalid() -> None:
    """`$` also matches before a final newline: the check must match the whole string."""
    good = new_id()
    for bad in (good + "\n", good + "\r\n", "\n" + good, good + "\n\n"):
        assert not is_valid_id(bad), repr(bad)


def test_save_load_and_restart(tmp_path: Path) -> None:
    store = ErasureStore(tmp_path)
    store.recover()
    record = add_record(store)
    assert store.get(record.id).status == JobStatus.queued
    store.save_artifact(record.id, make_artifact())
    assert store.get(record.id).status == JobStatus.succeeded
    reopened = ErasureStore(tmp_path)
    counts = reopened.recover()
    assert counts["records"] == 1 and counts["marked_failed"] == 0
    loaded = reopened.load_artifact(record.id)
    assert loaded.content_hash() == make_artifact().content_hash()
    assert reopened.delete(record.id) and not reopened.delete(record.id)
    with pytest.raises(ErasureNotFoundError):
        reopened.get(record.id)
    assert list(tmp_path.rglob("er_*")) == []


def test_recovery_never_serves_damaged_erasures(tmp_path: Path) -> None:
    store = ErasureStore(tmp_path)
    store.recover()
    good, missing, corrupt, truncated, unfinished = (add_record(store) for _ in range(5))
    for i, record in enumerate((good, missing, corrupt, truncated)):
        store.save_artifact(record.id, make_artifact(i))
    store.artifact_path(missing.id).unlink()
    data = bytearray(store.artifact_path(corrupt.id).read_bytes())
    data[-5] ^= 0xFF
    store.artifact_path(corrupt.id).write_bytes(bytes(data))
    full = store.artifact_path(truncated.id).read_bytes()
    store.artifact_path(truncated.id).write_bytes(full[: len(full) // 2])
    (store.artifacts_dir / f".{new_id()}.erasure.abc.tmp").write_bytes(b"half")
    (store.records_dir / f".{new_id()}.json.abc.tmp").write_bytes(b"{")
    orphan = store.artifact_path(new_id())
    orphan.write_bytes(full)
    (store.records_dir / "er_bad.json").write_text("{not json")

    reopened = ErasureStore(tmp_path)
    counts = reopened.recover()
    # orphans: the artifact without a record, plus the damaged artifacts of records now marked failed
    assert counts == {
        "records": 5,
        "tmp_removed": 2,
        "orphans_removed": 3,
        "marked_failed": 4,
        "checkpoints_removed": 0,
        "unreadable_skipped": 0,
    }
    assert reopened.get(good.id).status == JobStatus.succeeded
    for record in (missing, corrupt, truncated, unfinished):
        assert reopened.get(record.id).status == JobStatus.failed
        with pytest.raises(ArtifactError):
            reopened.load_artifact(record.id)
    assert reopened.get(unfinished.id).error.code == "interrupted"
    assert reopened.get(corrupt.id).error.code == "artifact_corrupt"
    assert not orphan.exists() and not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("how", ["permission", "directory"])
def test_recovery_never_deletes_what_it_cannot_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A record that cannot be read (EACCES, EIO, a directory in its place) is not "invalid": recovery logs it and
    leaves the record, its artifact and its checkpoint alone; a record that is read and invalid is still dropped."""
    store = ErasureStore(tmp_path)
    store.recover()
    kept, running = add_record(store), add_record(store)
    store.save_artifact(kept.id, make_artifact())
    store.checkpoint_path(running.id).write_bytes(b"checkpoint")
    artifact = store.artifact_path(kept.id).read_bytes()
    (store.records_dir / f"{new_id()}.json").write_text('{"id": "not a record"}')  # read, invalid: dropped
    blocked = [store.record_path(kept.id), store.record_path(running.id)]
    if how == "directory":
        for path in blocked:
            path.unlink()
            path.mkdir()
    else:
        for path in blocked:
            path.chmod(0)
        if os.geteuid() == 0:  # root reads through mode 000: make the read fail as it would for anyone else
            real_read_bytes = Path.read_bytes

            def read_bytes(self: Path) -> bytes:
                if self in blocked:
                    raise PermissionError(13, "Permission denied", str(self))
                return real_read_bytes(self)

            monkeypatch.setattr(Path, "read_bytes", read_bytes)

    counts = ErasureStore(tmp_path).recover()
    assert counts["unreadable_skipped"] == 2 and counts["orphans_removed"] == 0 and counts["checkpoints_removed"] == 0
    assert all(path.exists() for path in blocked), "an unreadable record was deleted"
    assert store.artifact_path(kept.id).read_bytes() == artifact
    assert store.checkpoint_path(running.id).read_bytes() == b"checkpoint"
    assert len(list(store.records_dir.glob("er_*.json"))) == 2  # the invalid one is gone, the unreadable ones stay

    if how == "permission":  # once the operator fixes the permissions, nothing was lost
        monkeypatch.undo()
        for path in blocked:
            path.chmod(0o644)
        fixed = ErasureStore(tmp_path)
        assert fixed.recover(interrupt_unfinished=False)["unreadable_skipped"] == 0
        assert fixed.load_artifact(kept.id).content_hash() == make_artifact().content_hash()
        assert fixed.get(running.id).status == JobStatus.queued and fixed.checkpoint_path(running.id).exists()


def test_artifact_altered_after_startup_is_refused(tmp_path: Path) -> None:
    store = ErasureStore(tmp_path)
    store.recover()
    record = add_record(store)
    store.save_artifact(record.id, make_artifact())
    path = store.artifact_path(record.id)
    path.write_bytes(path.read_bytes()[:-1] + b" ")
    with pytest.raises(ArtifactError):
        store.load_artifact(record.id)


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from erasure_core.artifacts import ErasureArtifact, LowRankDelta
    from service.store import ErasureRecord, ErasureStore, new_id
    store = ErasureStore(sys.argv[1])
    store.recover()
    print("started", flush=True)
    i = 0
    while True:
        record = store.add(ErasureRecord(id=new_id(), tenant="t", model="flux", method="ice", spec={"i": i}))
        delta = LowRankDelta(torch.randn(64, 512), torch.randn(512, 64))
        store.save_artifact(record.id, ErasureArtifact({"context_embedder": delta}, {"i": i}))
        i += 1
    """
)


@pytest.mark.parametrize("delay", [0.3, 0.55, 0.8])
def test_crash_while_writing_leaves_nothing_half_written(tmp_path: Path, delay: float) -> None:
    """SIGKILL a process in the middle of writing erasures; recovery serves only complete ones."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    store = ErasureStore(tmp_path)
    store.recover()
    records = store.list()
    assert records, "the writer made no record before it was killed"
    served = [r for r in records if r.status == JobStatus.succeeded]
    for record in served:
        store.load_artifact(record.id)  # validates hash, header and shapes
    for record in records:
        if record.status != JobStatus.succeeded:
            assert record.status == JobStatus.failed
            with pytest.raises(ArtifactError):
                store.load_artifact(record.id)
    assert not list(tmp_path.rglob("*.tmp"))
    assert {p.stem for p in store.artifacts_dir.iterdir()} <= {r.id for r in served}
    assert all(json.loads(p.read_text())["id"] == p.stem for p in store.records_dir.iterdir())
