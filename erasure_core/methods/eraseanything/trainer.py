"""EraseAnything++ training loop: LoRA on the family's text-stream Q/K, forget + retain losses balanced by EUPMU.

Each step computes (EraseAnything++, both objectives every step):
  forget  L_f = lambda_esd * ESD(vn, v0, vp) + lambda_attn * attention mass on the concept tokens (last double block)
  retain  L_r = lambda_fm * flow matching on concept images (augmented prompt), or on preserve images under their
                own prompts (`retain_images="preserve"`, this project's deviation)
              + lambda_nce * reverse self-contrastive InfoNCE (anchor vs synonym vs irrelevant words)
  loss = EUPMU(L_r, L_f; w) [+ lambda_preserve * ||v_lora - v_frozen||^2 on noised preserve images: this project's
  addition, 0 = published]; after the model step L_r is re-evaluated and w takes an Adam step on
  (L_r^before - L_r^after) / lr - eps.
State (LoRA factors, both optimisers, w, RNG, step) is checkpointed every `checkpoint_every` steps; a resumed run
continues from the checkpoint and, given the same seed, takes the same path.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from erasure_core.checkpoints import CheckpointStore
from erasure_core.families.flux_training import TextCondition
from erasure_core.methods.eraseanything import calibrate, losses
from erasure_core.methods.eraseanything.config import EraseAnythingConfig

logger = logging.getLogger(__name__)


class LoRAHooks:
    """Trainable LoRA factors on Linear modules through forward hooks (A ~ N(0, 1/r), B = 0: starts as identity).

    The factors (and so AdamW's state) are float32 whatever the base model's dtype: a bf16 base runs in bf16 and the
    hook casts its input up and the delta back down, since bf16 master weights lose small updates (bf16 has 8 bits of
    mantissa; a 1e-3 step on a weight near 1 rounds away)."""

    def __init__(self, model: nn.Module, names: list[str], rank: int, alpha: float, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.scale = alpha / rank
        self.enabled = True
        self.params: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
        self._handles = []
        for name in names:
            module = model.get_submodule(name)
            assert isinstance(module, nn.Linear)
            out_f, in_f = module.weight.shape
            device = module.weight.device
            a = nn.Parameter(torch.randn(rank, in_f, generator=g).to(device) / rank)
            b = nn.Parameter(torch.zeros(out_f, rank, device=device))
            self.params[name] = (a, b)
            self._handles.append(module.register_forward_hook(self._hook(a, b)))

    def _hook(self, a: nn.Parameter, b: nn.Parameter) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            if not self.enabled:
                return output
            delta = self.scale * ((inputs[0].to(a.dtype) @ a.T) @ b.T)
            return output + delta.to(output.dtype)

        return hook

    def parameters(self) -> list[nn.Parameter]:
        return [p for pair in self.params.values() for p in pair]

    @contextmanager
    def switched(self, enabled: bool) -> Iterator[None]:
        """The factors on (True) or off (False, the frozen base model) inside the block; on again after it."""
        self.enabled = enabled
        try:
            yield
        finally:
            self.enabled = True

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextmanager
def gradient_checkpointing(transformer: nn.Module, enabled: bool) -> Iterator[None]:
    """diffusers' activation checkpointing on the shared transformer for one training run, off again after it
    (generation and other jobs use the same module)."""
    if not enabled:
        yield
        return
    if not getattr(transformer, "_supports_gradient_checkpointing", False):
        logger.warning("%s does not support gradient checkpointing; training without", type(transformer).__name__)
        yield
        return
    transformer.enable_gradient_checkpointing()  # type: ignore[operator]
    try:
        yield
    finally:
        transformer.disable_gradient_checkpointing()  # type: ignore[operator]


@dataclass
class Batch:
    concept: TextCondition
    anchor: TextCondition
    synonym: TextCondition
    irrelevant: TextCondition  # [B * K]
    keyword_masks: dict[str, torch.Tensor]  # per condition name: [B(*K), S] over the joint sequence


def _cat(conds: list[TextCondition]) -> TextCondition:
    """Stacks text conditions row-wise."""
    return TextCondition(*(torch.cat([getattr(c, f) for c in conds]) for f in ("tokens", "pooled", "input_ids")))


@dataclass
class Noised:
    """Rows of base-model images noised to x_t = (1 - sigma) x0 + sigma noise (the rectified-flow path)."""

    idx: torch.Tensor
    x0: torch.Tensor
    noise: torch.Tensor
    sigma: torch.Tensor

    @property
    def x_t(self) -> torch.Tensor:
        return (1 - self.sigma[:, None, None]) * self.x0 + self.sigma[:, None, None] * self.noise


@dataclass
class RetainState:
    """One step's random draws for the retain losses, reused when L_r is re-evaluated after the model step."""

    fm: Noised
    keep: Noised | None  # velocity-preservation rows (lambda_preserve > 0)
    z_nce: torch.Tensor
    sigma_nce: torch.Tensor
    v_frozen: torch.Tensor | None = None


def augment(prompt: str, keyword: str, synonyms: list[str], rng: random.Random, cfg: EraseAnythingConfig) -> str:
    """EraseAnything's prompt augmentation: keyword -> synonym (p=synonym_p), words shuffled (p=shuffle_p)."""
    if synonyms and rng.random() < cfg.synonym_p:
        prompt = prompt.replace(keyword, rng.choice(synonyms))
    words = prompt.split()
    if rng.random() < cfg.shuffle_p:
        rng.shuffle(words)
    return " ".join(words)


class EraseAnythingTrainer:
    """Runs the EraseAnything++ optimisation on one pipeline of a family with training ops."""

    def __init__(
        self,
        pipe: Any,
        family: Any,
        cfg: EraseAnythingConfig,
        keyword: str,
        prompts: list[str],
        synonyms: list[str],
        anchor: str,
        preserve: list[str] | None = None,
        adaptive: bool = False,
    ) -> None:
        self.pipe, self.ops, self.cfg = pipe, family.training, cfg
        # What the adaptive controller may change during the run (`cfg` is the request, kept as sent).
        self.eta, self.lambda_preserve, self.lr, self.done = cfg.eta, cfg.lambda_preserve, cfg.lr, False
        self.adaptive = adaptive
        self.measured: dict[str, Any] = {}
        self.size = cfg.resolution  # None: the native size (a config not passed through `for_model`)
        self.keyword, self.prompts, self.synonyms, self.anchor = keyword, prompts, synonyms, anchor
        if cfg.uses_preserve_images and not preserve:
            raise ValueError("retain_images='preserve' and lambda_preserve need preserve prompts")
        targets = family.resolve_lora_targets(pipe.transformer, cfg.target_set)
        self.lora = LoRAHooks(pipe.transformer, targets, cfg.rank, cfg.alpha, cfg.seed)
        self.opt = torch.optim.AdamW(
            self.lora.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay, eps=1e-8
        )
        self.w = nn.Parameter(torch.zeros(()))
        self.w_opt = torch.optim.Adam([self.w], lr=cfg.eupmu_lr, weight_decay=cfg.eupmu_weight_decay)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.rng = random.Random(cfg.seed)
        self.step = 0
        # A lone anchor prompt never changes: encoded once (text encoding is a large share of a CPU step).
        self.anchor_cond = None if cfg.anchor_in_prompt else self.ops.encode_text(self.pipe, [anchor] * cfg.batch_size)
        self.concept_cond, self.concept_latents = self._base_images(
            [prompts[i % len(prompts)] for i in range(cfg.concept_images)]
        )
        self.preserve_cond: TextCondition | None = None
        self.preserve_latents = torch.empty(0)
        if cfg.uses_preserve_images:
            self.preserve_cond, self.preserve_latents = self._base_images(list(preserve or []))

    # ---- data -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _base_images(self, prompts: list[str]) -> tuple[TextCondition, torch.Tensor]:
        """Images of the prompts from the base pipeline itself (deterministic seeds), as packed latents."""
        cond = self.ops.encode_text(self.pipe, prompts)
        steps = self.cfg.sample_steps
        with self.lora.switched(False):
            latents, _ = self.ops.sample_partial(
                self.pipe, cond, steps, steps, torch.Generator().manual_seed(12345), size=self.size
            )
        return cond, latents

    def _keyword_mask(self, cond: TextCondition, words: list[str]) -> torch.Tensor:
        """[B, S] over the joint sequence (text first), True at each row's word tokens."""
        n_text = cond.tokens.shape[1]
        mask = torch.zeros(cond.tokens.shape[0], n_text + self.concept_latents.shape[1], dtype=torch.bool)
        for row, word in enumerate(words):
            positions = self.ops.keyword_positions(self.pipe, cond.index([row]), word)[0]
            mask[row, positions] = True
        return mask

    def _batch(self) -> Batch:
        """Concept prompts keep the keyword (words shuffled) so its tokens can be found; the synonym and irrelevant
        prompts swap it for another word, position for position."""
        cfg = self.cfg
        no_swap = cfg.model_copy(update={"synonym_p": 0.0})
        concept = [
            augment(self.rng.choice(self.prompts), self.keyword, [], self.rng, no_swap) for _ in range(cfg.batch_size)
        ]
        syn_words = [self.rng.choice(self.synonyms or [self.keyword]) for _ in concept]
        synonym = [p.replace(self.keyword, w) for p, w in zip(concept, syn_words, strict=True)]
        irr_words = list(cfg.irrelevant) * cfg.batch_size
        irrelevant = [p.replace(self.keyword, w) for p in concept for w in cfg.irrelevant]
        anchors = [p.replace(self.keyword, self.anchor) for p in concept] if self.anchor_cond is None else []
        # One encoder call for all rows (fewer, larger calls are faster on a CPU).
        rows = self.ops.encode_text(self.pipe, concept + synonym + anchors + irrelevant)
        b, a = cfg.batch_size, len(anchors)
        conds = {
            "concept": rows.index(list(range(b))),
            "synonym": rows.index(list(range(b, 2 * b))),
            "anchor": rows.index(list(range(2 * b, 2 * b + a))) if self.anchor_cond is None else self.anchor_cond,
            "irrelevant": rows.index(list(range(2 * b + a, len(rows.tokens)))),
        }
        masks = {
            "concept": self._keyword_mask(conds["concept"], [self.keyword] * len(concept)),
            "synonym": self._keyword_mask(conds["synonym"], syn_words),
            "irrelevant": self._keyword_mask(conds["irrelevant"], irr_words),
        }
        return Batch(conds["concept"], conds["anchor"], conds["synonym"], conds["irrelevant"], masks)

    # ---- losses -----------------------------------------------------------------------------------------------
    def _forget(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        stop = int(torch.randint(0, cfg.sample_steps, (1,), generator=self.generator))
        z, sigma = self.ops.sample_partial(self.pipe, batch.concept, cfg.sample_steps, stop, self.generator, self.size)
        with torch.no_grad(), self.lora.switched(not cfg.frozen_teacher):
            # anchor and concept rows in one call (rows are independent; one call is faster)
            both = self._velocity(z.repeat(2, 1, 1), sigma.repeat(2), _cat([batch.anchor, batch.concept]))
            v0, vp = both.chunk(2)
        with self.ops.capture_attention(self.pipe) as record:
            vn = self._velocity(z, sigma, batch.concept)
        frame_logs: dict[str, float] = {}
        token_frames = getattr(self.ops, "token_frames", None)
        if token_frames is None:  # images: one frame
            esd = losses.esd_loss(vn, v0, vp, self.eta)
        else:  # video: anchored on the first latent frame, enforced on the later ones (anchor-and-propagate)
            frames = token_frames(self.pipe, self.size)
            esd, per_frame = losses.anchored_esd_loss(vn, v0, vp, self.eta, frames, cfg.temporal_weight)
            frame_logs = {"esd_first": per_frame[0].item(), "esd_last": per_frame[-1].item()}
        attn = losses.attention_suppression(record["probs"], batch.keyword_masks["concept"])
        logs = {"esd": esd.item(), "attn": attn.item(), **frame_logs}
        return cfg.lambda_esd * esd + cfg.lambda_attn * attn, logs

    def _retain(
        self, batch: Batch, st: RetainState, with_keep: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
        """(L_r, the velocity-preservation loss or None, logs). Every row goes through the transformer in one call
        (rows are independent; one call is faster)."""
        cfg = self.cfg
        k = len(cfg.irrelevant)
        fm_cond = batch.concept if cfg.retain_images == "concept" else self._preserve(st.fm.idx)
        parts = [(st.fm.x_t, st.fm.sigma, fm_cond)]
        for cond, reps in ((batch.concept, 1), (batch.synonym, 1), (batch.irrelevant, k)):
            parts.append((st.z_nce.repeat_interleave(reps, 0), st.sigma_nce.repeat_interleave(reps, 0), cond))
        keep_rows = st.keep if with_keep else None
        separate_keep = keep_rows is not None and keep_rows is not st.fm
        if keep_rows is not None and separate_keep:
            parts.append((keep_rows.x_t, keep_rows.sigma, self._preserve(keep_rows.idx)))
        sizes = [len(x) for x, _, _ in parts]
        with self.ops.capture_attention(self.pipe) as record:
            v = self._velocity(
                torch.cat([x for x, _, _ in parts]),
                torch.cat([s for _, s, _ in parts]),
                _cat([c for _, _, c in parts]),
            )
        v_rows, probs = v.split(sizes), record["probs"].split(sizes)
        fm = losses.flow_matching_loss(v_rows[0], st.fm.noise, st.fm.x0)
        n_text = batch.concept.tokens.shape[1]
        sig = [
            losses.attention_signature(probs[i], batch.keyword_masks[name], n_text)
            for i, name in enumerate(("concept", "synonym", "irrelevant"), start=1)
        ]
        nce = losses.reverse_self_contrastive(sig[0], sig[1], sig[2].reshape(cfg.batch_size, k, -1), cfg.tau)
        loss, logs = cfg.lambda_fm * fm + cfg.lambda_nce * nce, {"fm": fm.item(), "nce": nce.item()}
        keep = None
        if keep_rows is not None:
            if st.v_frozen is None:  # the frozen model's answer does not change within a step: computed once
                st.v_frozen = self._frozen_velocity(keep_rows)
            keep = losses.velocity_preservation(v_rows[-1] if separate_keep else v_rows[0], st.v_frozen)
            logs["preserve"] = keep.item()
        return loss, keep, logs

    def _velocity(self, latents: torch.Tensor, sigma: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        return self.ops.velocity(self.pipe, latents, sigma, cond, size=self.size)

    @torch.no_grad()
    def _frozen_velocity(self, rows: Noised) -> torch.Tensor:
        with self.lora.switched(False):
            return self._velocity(rows.x_t, rows.sigma, self._preserve(rows.idx))

    def _preserve(self, idx: torch.Tensor) -> TextCondition:
        assert self.preserve_cond is not None
        return self.preserve_cond.index(idx)

    def _noised(self, latents: torch.Tensor, n: int, on_schedule: bool) -> Noised:
        """Rows noised at sigma ~ U(0, 1) (rectified-flow training, as published for the concept images) or at the
        sampling schedule's own levels, where generation queries the model (used for the preserve terms: most of
        the schedule sits at high noise, where the layout is decided and collateral changes show)."""
        g = self.generator
        idx = torch.randint(0, len(latents), (n,), generator=g)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=g).to(x0)
        if on_schedule:
            levels = self.ops.sigmas(self.pipe, self.cfg.sample_steps, self.size)[:-1]
            sigma = levels[torch.randint(0, len(levels), (n,), generator=g)].to(x0)
        else:
            sigma = torch.rand(n, generator=g).to(x0)
        return Noised(idx, x0, noise, sigma)

    def _retain_state(self) -> RetainState:
        cfg = self.cfg
        if cfg.retain_images == "concept":
            fm = self._noised(self.concept_latents, cfg.batch_size, on_schedule=False)
        else:
            fm = self._noised(self.preserve_latents, cfg.preserve_batch, on_schedule=True)
        keep = None
        if self.lambda_preserve > 0:  # the flow-matching draw serves both terms when it is already a preserve image
            keep = (
                fm if cfg.retain_images == "preserve" else self._noised(self.preserve_latents, cfg.preserve_batch, True)
            )
        stop = int(torch.randint(0, cfg.sample_steps, (1,), generator=self.generator))
        sig = self.ops.sigmas(self.pipe, cfg.sample_steps, self.size)
        z_nce = self.ops.noise(self.pipe, cfg.batch_size, self.generator, self.size)
        return RetainState(fm, keep, z_nce, sig[stop].expand(cfg.batch_size).to(z_nce))

    # ---- loop -------------------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        batch = self._batch()
        state = self._retain_state()
        loss_f, logs_f = self._forget(batch)
        loss_r, keep, logs_r = self._retain(batch, state)
        w = float(self.w.detach())
        total = losses.eupmu_combine(loss_r, loss_f, w)
        if keep is not None:  # outside EUPMU, which drops L_r entirely while w < 0: preservation holds throughout
            total = total + self.lambda_preserve * keep
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        with torch.no_grad():
            retain_after, _, _ = self._retain(batch, state, with_keep=False)
        self.w_opt.zero_grad(set_to_none=True)
        self.w.grad = torch.tensor(
            losses.eupmu_weight_gradient(loss_r.item(), retain_after.item(), self.lr, self.cfg.eupmu_eps)
        )
        self.w_opt.step()
        self.step += 1
        return {"loss": total.item(), "loss_f": loss_f.item(), "loss_r": loss_r.item(), "w": w, **logs_f, **logs_r}

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {"w": self.w.detach().clone(), "generator": self.generator.get_state()}
        for name, (a, b) in self.lora.params.items():
            tensors[f"lora.{name}.A"], tensors[f"lora.{name}.B"] = a.detach(), b.detach()
        for prefix, opt in (("opt", self.opt), ("w_opt", self.w_opt)):
            for pid, st in opt.state_dict()["state"].items():
                for key, value in st.items():
                    tensors[f"{prefix}.{pid}.{key}"] = torch.as_tensor(value).clone()
        meta = {"step": self.step, "rng": list(self.rng.getstate()[1]), "rng_version": self.rng.getstate()[0]}
        controls: dict[str, Any] = {"eta": self.eta, "lambda_preserve": self.lambda_preserve, "lr": self.lr}
        controls |= {"done": self.done, "anchor": self.anchor}
        return tensors, {**meta, "controls": controls, "measured": self.measured}

    def set_lr(self, lr: float) -> None:
        self.lr = lr
        for group in self.opt.param_groups:
            group["lr"] = lr

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        with torch.no_grad():
            self.w.copy_(tensors["w"])
            for name, (a, b) in self.lora.params.items():
                a.copy_(tensors[f"lora.{name}.A"])
                b.copy_(tensors[f"lora.{name}.B"])
        self.generator.set_state(tensors["generator"])
        for prefix, opt in (("opt", self.opt), ("w_opt", self.w_opt)):
            sd = opt.state_dict()
            n_params = len(sd["param_groups"][0]["params"])
            sd["state"] = {
                pid: {key.split(".")[-1]: tensors[key] for key in tensors if key.startswith(f"{prefix}.{pid}.")}
                for pid in range(n_params)
                if f"{prefix}.{pid}.step" in tensors
            }
            opt.load_state_dict(sd)
        self.rng.setstate((meta["rng_version"], tuple(meta["rng"]), None))
        self.step = int(meta["step"])
        if "controls" in meta:  # what the adaptive controller had chosen when the checkpoint was written
            c = meta["controls"]
            self.eta, self.lambda_preserve, self.done = float(c["eta"]), float(c["lambda_preserve"]), bool(c["done"])
            self.anchor, self.measured = str(c["anchor"]), dict(meta.get("measured", {}))
            self.set_lr(float(c["lr"]))

    def run(self, progress: Any = None, checkpoints: CheckpointStore | None = None) -> None:
        on = bool(self.cfg.gradient_checkpointing)
        # Checkpointing recomputes each block in backward, after `capture_attention` has put the block's own
        # processor back: recomputed with other math, its saved tensors would not match. So while it is on, the
        # recording processor stays on that block for the whole run (the same attention, written out).
        with (
            gradient_checkpointing(self.pipe.transformer, on),
            self.ops.capture_attention(self.pipe) if on else nullcontext(),
        ):
            self._run(progress, checkpoints)

    def _run(self, progress: Any, checkpoints: CheckpointStore | None) -> None:
        if checkpoints is not None and (saved := checkpoints.load()) is not None:
            self.restore(*saved)
            logger.info("resumed EraseAnything++ training at step %d", self.step)
        control = calibrate.Controller(self) if self.adaptive else None
        cap = control.cap if control is not None else self.cfg.steps
        while self.step < cap and not self.done:
            logs = self.train_step()
            if control is not None and (self.step % control.every == 0 or self.step == cap):
                logs = {**logs, **control.check()}
            if checkpoints is not None and (
                self.step % self.cfg.checkpoint_every == 0 or self.step == cap or self.done
            ):
                checkpoints.save(*self.state())
            if progress is not None:
                progress(self.step, cap, logs)
        if control is not None:
            control.finish()
