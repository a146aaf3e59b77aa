"""EraseAnything++ training loop: LoRA on the family's text-stream Q/K, forget + retain losses balanced by EUPMU.

Each step computes (EraseAnything++, both objectives every step):
  forget  L_f = lambda_esd * ESD(vn, v0, vp) + lambda_attn * attention mass on the concept tokens (last double block)
  retain  L_r = lambda_fm * flow matching on concept images (augmented prompt)
              + lambda_nce * reverse self-contrastive InfoNCE (anchor vs synonym vs irrelevant words)
  loss = EUPMU(L_r, L_f; w); after the model step L_r is re-evaluated and w takes an Adam step on
  (L_r^before - L_r^after) / lr - eps.
State (LoRA factors, both optimisers, w, RNG, step) is checkpointed every `checkpoint_every` steps; a resumed run
continues from the checkpoint and, given the same seed, takes the same path.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from erasure_core.checkpoints import CheckpointStore
from erasure_core.families.flux_training import TextCondition
from erasure_core.methods.eraseanything import losses
from erasure_core.methods.eraseanything.config import EraseAnythingConfig

logger = logging.getLogger(__name__)


class LoRAHooks:
    """Trainable LoRA factors on Linear modules through forward hooks (A ~ N(0, 1/r), B = 0: starts as identity)."""

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
            like = module.weight
            a = nn.Parameter(torch.randn(rank, in_f, generator=g).to(like) / rank)
            b = nn.Parameter(torch.zeros(out_f, rank).to(like))
            self.params[name] = (a, b)
            self._handles.append(module.register_forward_hook(self._hook(a, b)))

    def _hook(self, a: nn.Parameter, b: nn.Parameter) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            if not self.enabled:
                return output
            return output + self.scale * ((inputs[0] @ a.T) @ b.T)

        return hook

    def parameters(self) -> list[nn.Parameter]:
        return [p for pair in self.params.values() for p in pair]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@dataclass
class Batch:
    concept: TextCondition
    anchor: TextCondition
    synonym: TextCondition
    irrelevant: TextCondition  # [B * K]
    keyword_masks: dict[str, torch.Tensor]  # per condition name: [B(*K), S] over the joint sequence


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
    ) -> None:
        self.pipe, self.ops, self.cfg = pipe, family.training, cfg
        self.keyword, self.prompts, self.synonyms, self.anchor = keyword, prompts, synonyms, anchor
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
        self.concept_latents = self._concept_images()

    # ---- data -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _concept_images(self) -> torch.Tensor:
        """Images of the concept from the base pipeline itself (deterministic seeds), as packed latents."""
        n = self.cfg.concept_images
        cond = self.ops.encode_text(self.pipe, [self.prompts[i % len(self.prompts)] for i in range(n)])
        steps = self.cfg.sample_steps
        self.lora.enabled = False
        try:
            latents, _ = self.ops.sample_partial(self.pipe, cond, steps, steps, torch.Generator().manual_seed(12345))
        finally:
            self.lora.enabled = True
        return latents

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
        conds = {
            "concept": self.ops.encode_text(self.pipe, concept),
            "anchor": self.ops.encode_text(self.pipe, [self.anchor] * cfg.batch_size),
            "synonym": self.ops.encode_text(self.pipe, synonym),
            "irrelevant": self.ops.encode_text(self.pipe, irrelevant),
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
        z, sigma = self.ops.sample_partial(self.pipe, batch.concept, cfg.sample_steps, stop, self.generator)
        with torch.no_grad():
            self.lora.enabled = not cfg.frozen_teacher
            try:
                v0 = self.ops.velocity(self.pipe, z, sigma, batch.anchor)
                vp = self.ops.velocity(self.pipe, z, sigma, batch.concept)
            finally:
                self.lora.enabled = True
        with self.ops.capture_attention(self.pipe) as record:
            vn = self.ops.velocity(self.pipe, z, sigma, batch.concept)
        esd = losses.esd_loss(vn, v0, vp, cfg.eta)
        attn = losses.attention_suppression(record["probs"], batch.keyword_masks["concept"])
        return cfg.lambda_esd * esd + cfg.lambda_attn * attn, {"esd": esd.item(), "attn": attn.item()}

    def _retain(self, batch: Batch, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        x0, noise, sigma, z_nce = state["x0"], state["noise"], state["sigma"], state["z_nce"]
        x_t = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        fm = losses.flow_matching_loss(self.ops.velocity(self.pipe, x_t, sigma, batch.concept), noise, x0)
        signatures = {}
        n_text = batch.concept.tokens.shape[1]
        k = len(cfg.irrelevant)
        for name, cond in (("concept", batch.concept), ("synonym", batch.synonym), ("irrelevant", batch.irrelevant)):
            reps = k if name == "irrelevant" else 1
            z = z_nce.repeat_interleave(reps, dim=0)
            s = state["sigma_nce"].repeat_interleave(reps, dim=0)
            with self.ops.capture_attention(self.pipe) as record:
                self.ops.velocity(self.pipe, z, s, cond)
            signatures[name] = losses.attention_signature(record["probs"], batch.keyword_masks[name], n_text)
        irr = signatures["irrelevant"].reshape(cfg.batch_size, k, -1)
        nce = losses.reverse_self_contrastive(signatures["concept"], signatures["synonym"], irr, cfg.tau)
        return cfg.lambda_fm * fm + cfg.lambda_nce * nce, {"fm": fm.item(), "nce": nce.item()}

    def _retain_state(self) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        idx = torch.randint(0, len(self.concept_latents), (cfg.batch_size,), generator=self.generator)
        x0 = self.concept_latents[idx]
        stop = int(torch.randint(0, cfg.sample_steps, (1,), generator=self.generator))
        sig = self.ops.sigmas(self.pipe, cfg.sample_steps)
        z_nce = self.ops.noise(self.pipe, cfg.batch_size, self.generator)
        return {
            "x0": x0,
            "noise": torch.randn(x0.shape, generator=self.generator).to(x0),
            "sigma": torch.rand(cfg.batch_size, generator=self.generator).to(x0),
            "z_nce": z_nce,
            "sigma_nce": sig[stop].expand(cfg.batch_size).to(x0),
        }

    # ---- loop -------------------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        batch = self._batch()
        state = self._retain_state()
        loss_f, logs_f = self._forget(batch)
        loss_r, logs_r = self._retain(batch, state)
        w = float(self.w.detach())
        total = losses.eupmu_combine(loss_r, loss_f, w)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        with torch.no_grad():
            retain_after, _ = self._retain(batch, state)
        self.w_opt.zero_grad(set_to_none=True)
        self.w.grad = torch.tensor(
            losses.eupmu_weight_gradient(loss_r.item(), retain_after.item(), self.cfg.lr, self.cfg.eupmu_eps)
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
        return tensors, {"step": self.step, "rng": list(self.rng.getstate()[1]), "rng_version": self.rng.getstate()[0]}

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

    def run(self, progress: Any = None, checkpoints: CheckpointStore | None = None) -> None:
        if checkpoints is not None and (saved := checkpoints.load()) is not None:
            self.restore(*saved)
            logger.info("resumed EraseAnything++ training at step %d", self.step)
        while self.step < self.cfg.steps:
            logs = self.train_step()
            if checkpoints is not None and (self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps):
                checkpoints.save(*self.state())
            if progress is not None:
                progress(self.step, self.cfg.steps, logs)
