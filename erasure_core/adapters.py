"""Attaching erasures to a model and switching the active set, exactly and cheaply.

Each edited Linear module gets one forward hook (registered once, named by `HOOK_ATTR`) that adds the active
erasures' low-rank deltas to its output: y = W x + b + sum_i s_i B_i A_i x. Nothing is merged into the base weights,
so detaching — or activating the empty set — gives bit-identical outputs, switching sets is a pointer change, and
sets compose by addition (the same semantics as stacked peft LoRA adapters). Deltas of one set that touch the same
module are concatenated once per set, so a set costs two small matmuls per module whatever its size; a set of one
erasure uses its attached factors as they are (scales are folded in at attach), so only sets of two or more hold a
fused copy, and `fused_nbytes` reports what those copies cost (the service counts them in its cache budget).

One `AdapterHost` per model. It is not thread-safe on its own: callers activate a set and run the model under one
lock per pipeline (see the service's adapter manager).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from erasure_core.artifacts import ErasureArtifact, LowRankDelta
from erasure_core.errors import AdapterNotFoundError, IncompatibleAdapterError, NoMatchingModuleError

logger = logging.getLogger(__name__)

HOOK_ATTR = "_erasure_adapter_host"
_FUSED_CACHE_SIZE = 64


class _ModuleSlot:
    """The forward hook of one module: adds the fused delta of the active set, then applies its guard.

    Input-side deltas add B A x to the output (LoRA semantics, composing by addition). A guard acts on what the
    layer produced, after every input-side delta: y <- y + G_B G_A (y - b). So a guard sees the layer's output
    whatever the active deltas did to it, which is what lets a policy hold above erasures that remap another
    concept onto the one it removes (see `erasure_core.methods.ice.guard`).
    """

    def __init__(self, module: nn.Linear) -> None:
        self.module = module
        self.A: torch.Tensor | None = None  # [sum r, in]
        self.B: torch.Tensor | None = None  # [out, sum r], scales folded in
        self.guards: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()  # (G_A [k, out], G_B [out, k])
        self.handle = module.register_forward_hook(self)

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        if self.A is not None and self.B is not None:
            if self.A.device != output.device:
                self._follow(output.device)
            output = output + F.linear(F.linear(inputs[0], self.A), self.B)
        bias = self.module.bias
        if self.guards and self.guards[0][0].device != output.device:
            self._follow(output.device)
        for g_a, g_b in self.guards:
            produced = output if bias is None else output - bias
            output = output + F.linear(F.linear(produced, g_a), g_b)
        return output

    def _follow(self, device: torch.device) -> None:
        """Moves this activation's factors to where the layer runs. Factors are prepared on the weight's device at
        attach; under CPU offload that is the CPU while the layer runs on the GPU. Moved once per activation (the
        next `activate` sets the prepared factors again), never per step."""
        if self.A is not None and self.B is not None:
            self.A, self.B = self.A.to(device), self.B.to(device)
        self.guards = tuple((g_a.to(device), g_b.to(device)) for g_a, g_b in self.guards)


class ErasureSet(tuple[str, ...]):
    """A set of erasure names in its one canonical form: sorted and unique, so equal sets compare and hash equal.

    Constructing one from an `ErasureSet` returns it unchanged, so a set is normalised once where it enters (the
    service builds it from a request) and passed through as it is after that.
    """

    def __new__(cls, names: Iterable[str] = ()) -> ErasureSet:
        if isinstance(names, ErasureSet):
            return names
        return super().__new__(cls, sorted(set(names)))


def layer_hash(model: nn.Module, module_names: Iterable[str]) -> str:
    """sha256 over the named modules' weights: identifies the base model an erasure was computed for."""
    digest = hashlib.sha256()
    for name in sorted(module_names):
        module = get_linear(model, name)
        digest.update(name.encode())
        digest.update(str(tuple(module.weight.shape)).encode())
        digest.update(module.weight.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def get_linear(model: nn.Module, name: str) -> nn.Linear:
    try:
        module = model.get_submodule(name)
    except AttributeError as e:
        raise NoMatchingModuleError(f"the model has no module {name!r}") from e
    if not isinstance(module, nn.Linear):
        raise NoMatchingModuleError(f"module {name!r} is a {type(module).__name__}, not a Linear layer")
    return module


class AdapterHost:
    """Named erasures attached to one model, and the set currently active.

    Example:
        >>> host = AdapterHost.for_model(pipe.transformer)
        >>> host.attach("circle", artifact)
        >>> host.activate(["circle"])      # generate without circles
        >>> host.activate([])              # the base model again, bit-identical
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._slots: dict[str, _ModuleSlot] = {}
        self._attached: dict[str, dict[str, LowRankDelta]] = {}
        self._guards: dict[ErasureSet, dict[str, LowRankDelta]] = {}  # by the erasures each guard covers
        self._active = ErasureSet()
        self._guarded = ErasureSet()
        self._fused: OrderedDict[_Key, dict[str, _Factors]] = OrderedDict()

    @classmethod
    def for_model(cls, model: nn.Module) -> AdapterHost:
        """The model's host, created on first use."""
        host = getattr(model, HOOK_ATTR, None)
        if host is None:
            host = cls(model)
            object.__setattr__(model, HOOK_ATTR, host)  # plain attribute, not a registered submodule
        return host

    @property
    def attached(self) -> tuple[str, ...]:
        return tuple(self._attached)

    @property
    def guards(self) -> tuple[ErasureSet, ...]:
        """The sets of erasures that have a guard attached (see `attach_guard`)."""
        return tuple(self._guards)

    @property
    def active(self) -> ErasureSet:
        return self._active

    @property
    def guarded(self) -> ErasureSet:
        """The active erasures whose guards are active too."""
        return self._guarded

    @property
    def fused_nbytes(self) -> int:
        """Bytes held by fused copies of sets of two or more erasures (sets of one hold none)."""
        return sum(_nbytes(fused) for fused in self._fused.values())

    @property
    def guard_nbytes(self) -> int:
        """Bytes held by attached guards."""
        return sum(d.A.nbytes + d.B.nbytes for guard in self._guards.values() for d in guard.values())

    def fused_cost(self, names: Iterable[str], guarded: Iterable[str] = ()) -> int:
        """Bytes that activating `names` would add as a new fused copy (0 when cached or not needed)."""
        key = (ErasureSet(names), ErasureSet(guarded))
        if not self._needs_fusing(key) or key in self._fused:
            return 0
        return sum(d.A.nbytes + d.B.nbytes for n in key[0] for d in self._attached[n].values())

    def drop_fused(self, keep: Iterable[str] = (), keep_guarded: Iterable[str] = ()) -> int:
        """Drops every cached fused copy but `keep`'s (they are rebuilt on demand); returns the bytes released."""
        keep_key = (ErasureSet(keep), ErasureSet(keep_guarded))
        released = 0
        for key in [k for k in self._fused if k != keep_key]:
            released += _nbytes(self._fused.pop(key))
        return released

    def _prepare(self, name: str, deltas: dict[str, LowRankDelta], side: str = "input") -> dict[str, LowRankDelta]:
        prepared = {}
        for module_name, delta in deltas.items():
            module = get_linear(self.model, module_name)
            out_f, in_f = module.weight.shape
            reads = out_f if side == "output" else in_f
            if delta.A.shape[1] != reads or delta.B.shape[0] != out_f:
                raise IncompatibleAdapterError(
                    f"erasure {name!r}: module {module_name!r} is {out_f}x{in_f} but the {side}-side delta is "
                    f"{delta.B.shape[0]}x{delta.A.shape[1]}"
                )
            like = module.weight
            # Fresh, aligned copies: a set of one uses these as they are, and a factor that is a view into a loaded
            # file's buffer can take another matmul path (other low bits) than the same values computed in memory.
            prepared[module_name] = LowRankDelta(
                delta.A.to(device=like.device, dtype=like.dtype, copy=True).contiguous(),
                (delta.B * delta.scale).to(device=like.device, dtype=like.dtype).contiguous(),
            )
        return prepared

    def _slot(self, module_name: str) -> None:
        if module_name not in self._slots:
            self._slots[module_name] = _ModuleSlot(get_linear(self.model, module_name))

    def attach(self, name: str, artifact: ErasureArtifact, expected_hash: str | None = None) -> bool:
        """Attaches an erasure under `name` (inactive). Returns False when that name is already attached.

        Raises:
            IncompatibleAdapterError: `expected_hash` differs from the artifact's base layer hash, or shapes differ.
        """
        if name in self._attached:
            return False
        base = artifact.metadata.get("base_model", {})
        if expected_hash is not None and base.get("layer_hash") != expected_hash:
            raise IncompatibleAdapterError(
                f"erasure {name!r} was computed for another base model (layer hash {base.get('layer_hash')!r})"
            )
        prepared = self._prepare(name, artifact.deltas)
        for module_name in prepared:
            self._slot(module_name)
        self._attached[name] = prepared
        return True

    def attach_guard(self, covers: Iterable[str], deltas: dict[str, LowRankDelta]) -> None:
        """Attaches the output-side guard of the attached erasures `covers` (one guard solved for all of them).

        Activated with `guarded=covers`, the guard takes the place of their input-side deltas on the guard's
        modules (their other modules keep their deltas) and acts after every other active delta there.
        """
        key = ErasureSet(covers)
        missing = [n for n in key if n not in self._attached]
        if not key or missing:
            raise AdapterNotFoundError(f"a guard covers attached erasures; not attached: {missing}")
        prepared = self._prepare(",".join(key), deltas, side="output")
        for module_name in prepared:
            self._slot(module_name)
        self._guards[key] = prepared
        for fused_key in [k for k in self._fused if k[1] == key]:
            del self._fused[fused_key]
        if key == self._guarded:
            self.activate(self._active, self._guarded)

    def detach_guard(self, covers: Iterable[str]) -> bool:
        """Detaches the guard of `covers` (not while it is active). Returns False if there was none."""
        key = ErasureSet(covers)
        if key not in self._guards:
            return False
        if key == self._guarded:
            raise AdapterNotFoundError(f"the guard of {list(key)} is active; activate another set first")
        del self._guards[key]
        for fused_key in [k for k in self._fused if k[1] == key]:
            del self._fused[fused_key]
        return True

    def detach(self, name: str) -> bool:
        """Detaches an erasure (and its guard); if it was active, the active set loses it. Returns False if it was
        not attached."""
        if name not in self._attached:
            return False
        if name in self._active:
            self.activate([n for n in self._active if n != name], [n for n in self._guarded if n != name])
        del self._attached[name]
        for key in [k for k in self._guards if name in k]:
            del self._guards[key]
        self._forget_fused(name)
        return True

    def _forget_fused(self, name: str) -> None:
        for key in [k for k in self._fused if name in k[0]]:
            del self._fused[key]

    @staticmethod
    def _needs_fusing(key: _Key) -> bool:
        return len(key[0]) > 1 or bool(key[1])

    def _fuse(self, key: _Key) -> dict[str, _Factors]:
        names, guarded = key
        if not self._needs_fusing(key):
            return {m: (d.A, d.B, ()) for m, d in self._attached[names[0]].items()}
        cached = self._fused.get(key)
        if cached is not None:
            self._fused.move_to_end(key)
            return cached
        inputs: dict[str, list[LowRankDelta]] = {}
        guard = self._guards[guarded] if guarded else {}
        for n in names:
            for module_name, delta in self._attached[n].items():
                if not (n in guarded and module_name in guard):
                    inputs.setdefault(module_name, []).append(delta)
        fused = {m: (*_cat(inputs.get(m)), _pair(guard.get(m))) for m in {*inputs, *guard}}
        self._fused[key] = fused
        if len(self._fused) > _FUSED_CACHE_SIZE:
            self._fused.popitem(last=False)
        return fused

    def activate(self, names: Iterable[str], guarded: Iterable[str] = ()) -> None:
        """Makes exactly `names` active (order-insensitive; duplicates ignored); `[]` restores the base model.

        `guarded` (a subset of `names` with a guard attached for exactly that subset) are applied through their
        guard on its modules, after everything else active there.
        """
        key = (ErasureSet(names), ErasureSet(guarded))
        missing = [n for n in key[0] if n not in self._attached]
        if missing:
            raise AdapterNotFoundError(f"erasures not attached: {missing}")
        if key[1] and (key[1] not in self._guards or not set(key[1]) <= set(key[0])):
            raise AdapterNotFoundError(f"guarded erasures must be active and have one guard attached: {list(key[1])}")
        fused = self._fuse(key) if key[0] else {}
        for module_name, slot in self._slots.items():
            slot.A, slot.B, slot.guards = fused.get(module_name, (None, None, ()))
        self._active, self._guarded = key

    def close(self) -> None:
        """Removes every hook: the model is exactly as before the first attach."""
        for slot in self._slots.values():
            slot.handle.remove()
        self._slots.clear()
        self._attached.clear()
        self._guards.clear()
        self._fused.clear()
        self._active = ErasureSet()
        self._guarded = ErasureSet()
        if getattr(self.model, HOOK_ATTR, None) is self:
            object.__delattr__(self.model, HOOK_ATTR)


_Key = tuple[ErasureSet, ErasureSet]  # (active erasures, those applied through their guards)
_Factors = tuple[torch.Tensor | None, torch.Tensor | None, tuple[tuple[torch.Tensor, torch.Tensor], ...]]


def _pair(delta: LowRankDelta | None) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    return () if delta is None else ((delta.A, delta.B),)


def _cat(deltas: list[LowRankDelta] | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if not deltas:
        return None, None
    return torch.cat([d.A for d in deltas]), torch.cat([d.B for d in deltas], dim=1)


def _nbytes(fused: dict[str, _Factors]) -> int:
    # Guards are referenced, not copied (`guard_nbytes` counts them): only the concatenations are extra.
    return sum(t.nbytes for a, b, _ in fused.values() for t in (a, b) if t is not None)
