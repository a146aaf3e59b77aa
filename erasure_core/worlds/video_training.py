"""Training of the video demo world: the tiny causal Hunyuan VAE and the tiny Open-Sora transformer.

Library code for `scripts/train_video_world.py`; deterministic for a seed on a given machine. The transformer is
trained exactly as `OpenSoraPipeline.__call__` samples:

* latents: VAE posterior mode of a clip [C, T, h, w], times the VAE's `scaling_factor` (the pipeline decodes
  latents / scaling_factor with no shift for this VAE), packed by the pipeline's own `pack_latents` (2x2 patches,
  channel-major) with (t, h, w) positions from its `video_ids`;
* rectified flow: x_t = (1 - sigma) x0 + sigma noise, target velocity = noise - x0, the model fed sigma (the pipeline
  passes t / 1000 with t = 1000 sigma after Open-Sora's shift);
* text: prompts decorated as the pipeline does by default (" 24 FPS. 4 motion score."), encoded by the frozen MiniLM
  at 24 tokens in both slots (`worlds.text.encode` is the pipeline's encoding); a fraction of the samples get the
  undecorated empty prompt, the pipeline's default negative, so its text guidance (c - u) has a trained u;
* the image condition: the pipeline passes a zero condition, which `cond_embedder` maps to its bias; training passes
  None, which the model treats identically.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLHunyuanVideo

from erasure_core.checkpoints import FileCheckpoints
from erasure_core.pipelines.open_sora.pipeline_open_sora import decorate_prompt, pack_latents, video_ids
from erasure_core.pipelines.open_sora.transformer_open_sora import OpenSoraTransformer3DModel
from erasure_core.worlds.clips import all_clip_captions, sample_clips
from erasure_core.worlds.text import encode
from erasure_core.worlds.training import cosine_lr, sample_sigmas
from erasure_core.worlds.video_world import TRANSFORMER_CONFIG, VAE_CONFIG

logger = logging.getLogger(__name__)

NEGATIVE_PROMPT = ""  # OpenSoraPipeline's default negative prompt (used undecorated)


@dataclass
class VideoVaeTrainConfig:
    """Hyperparameters of the VAE run (the committed VAE: 1000 steps, 94% of reconstructed frames judged right)."""

    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-3
    kl_weight: float = 1e-4
    seed: int = 0


@dataclass
class VideoTransformerTrainConfig:
    """Hyperparameters of the transformer run (the committed weights' run; 3000 steps fell short of the bar)."""

    steps: int = 4500
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    weight_decay: float = 0.01
    dataset_size: int = 6000
    uncond_probability: float = 0.1
    seed: int = 0


def clips_to_video(frames: torch.Tensor) -> torch.Tensor:
    """[N, F, 3, H, W] in [0, 1] -> the VAE's [N, 3, F, H, W] in [-1, 1]."""
    return frames.permute(0, 2, 1, 3, 4) * 2 - 1


def train_video_vae(config: VideoVaeTrainConfig | None = None) -> AutoencoderKLHunyuanVideo:
    """Trains the tiny causal VAE on clips (L1 + MSE reconstruction, a small KL term); sets its scaling factor."""
    config = config or VideoVaeTrainConfig()
    torch.manual_seed(config.seed)
    vae = AutoencoderKLHunyuanVideo(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=config.lr, weight_decay=0.0)
    vae.train()
    started = time.monotonic()
    for step in range(config.steps):
        for group in opt.param_groups:
            group["lr"] = config.lr * cosine_lr(step, config.steps, 50)
        x = clips_to_video(sample_clips(config.batch_size, seed=40_000_000 + step).frames)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / x[0].numel()
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + config.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == config.steps - 1:
            elapsed = time.monotonic() - started
            logger.info("vae step %d/%d loss %.4f (%.0f s)", step, config.steps, loss.item(), elapsed)
    vae.eval()
    with torch.no_grad():
        x = clips_to_video(sample_clips(256, seed=12345).frames)
        latents = torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in x.split(32)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    logger.info("vae latent mean %.4f std %.4f", float(latents.mean()), float(latents.std()))
    return vae


def encode_clip_captions() -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Every clip caption, decorated as the pipeline does, then the empty negative: (captions, tokens, pooled).

    The last row is the undecorated empty prompt. Captions are returned undecorated (row order = `all_clip_captions`).
    """
    captions = all_clip_captions()
    texts = [decorate_prompt(c) for c in captions] + [NEGATIVE_PROMPT]
    tokens, pooled = encode(texts)
    return captions, tokens, pooled


@torch.no_grad()
def encode_clips(vae: AutoencoderKLHunyuanVideo, frames: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Clips [N, F, 3, H, W] in [0, 1] -> scaled, packed latents [N, tokens, C * p * p] as the pipeline unpacks them."""
    patch = int(TRANSFORMER_CONFIG["patch_size"])
    out = []
    for part in frames.split(chunk):
        latents = vae.encode(clips_to_video(part)).latent_dist.mode() * vae.config.scaling_factor
        out.append(pack_latents(latents, patch))
    return torch.cat(out)


def build_video_training_set(
    vae: AutoencoderKLHunyuanVideo, captions: list[str], size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Renders and encodes `size` clips: (packed latents [N, tokens, d], caption rows [N] into `captions`)."""
    index = {c: i for i, c in enumerate(captions)}
    latents: list[torch.Tensor] = []
    rows: list[int] = []
    for start in range(0, size, 500):
        batch = sample_clips(min(500, size - start), seed=seed * 1_000_003 + start)
        latents.append(encode_clips(vae, batch.frames))
        rows.extend(index[c] for c in batch.captions)
    return torch.cat(latents), torch.tensor(rows)


def latent_grid() -> tuple[int, int, int]:
    """(latent frames, token rows, token columns) of a native clip."""
    patch = int(TRANSFORMER_CONFIG["patch_size"])
    side = int(TRANSFORMER_CONFIG["sample_size"]) // patch
    return int(TRANSFORMER_CONFIG["sample_frames"]), side, side


def train_video_transformer(
    latents: torch.Tensor,
    rows: torch.Tensor,
    tokens: torch.Tensor,
    pooled: torch.Tensor,
    config: VideoTransformerTrainConfig | None = None,
    on_step: Callable[[int, float], None] | None = None,
    device: str = "cpu",
    init: OpenSoraTransformer3DModel | None = None,
    checkpoints: FileCheckpoints | None = None,
    checkpoint_every: int = 250,
) -> OpenSoraTransformer3DModel:
    """Trains the tiny Open-Sora transformer (rectified flow, text dropout to the empty negative); returns its EMA.

    Args:
        latents: packed clip latents [N, tokens, d] from `build_video_training_set`.
        rows: caption row of each clip into `tokens` / `pooled`.
        tokens, pooled: encoded captions from `encode_clip_captions` (last row: the empty negative).
        init: weights to continue from (e.g. the committed transformer); its copy is trained and its EMA starts
            from it. None: a fresh model.
        checkpoints: where to save the whole training state every `checkpoint_every` steps and to resume from
            (a killed run restarted with the same arguments ends with the same weights); cleared at the end.
    """
    config = config or VideoTransformerTrainConfig()
    torch.manual_seed(config.seed)
    if init is None:
        model = OpenSoraTransformer3DModel(**TRANSFORMER_CONFIG).to(device)
    else:
        model = copy.deepcopy(init).to(device).requires_grad_(True)
    ema = copy.deepcopy(model).requires_grad_(False)
    latents, rows, tokens, pooled = latents.to(device), rows.to(device), tokens.to(device), pooled.to(device)
    frames, height, width = latent_grid()
    img_ids = video_ids(frames, height, width, torch.device(device), torch.float32)
    txt_ids = torch.zeros(tokens.shape[1], 3, device=device)
    negative = tokens.shape[0] - 1
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    g = torch.Generator().manual_seed(config.seed + 7)
    first, wall_before, cpu_before = 0, 0.0, 0.0
    saved = checkpoints.load() if checkpoints is not None else None
    if saved is not None:
        first, wall_before, cpu_before = _restore_training_state(saved, config, model, ema, opt, g)
        logger.info("transformer resumed at step %d/%d (%.0f s before)", first, config.steps, wall_before)
    model.train()
    started, cpu_started = time.monotonic(), time.process_time()
    for step in range(first, config.steps):
        for group in opt.param_groups:
            group["lr"] = config.lr * cosine_lr(step, config.steps, config.warmup)
        idx = torch.randint(len(latents), (config.batch_size,), generator=g)
        text_rows = rows[idx.to(device)]
        drop = (torch.rand(config.batch_size, generator=g) < config.uncond_probability).to(device)
        text_rows = torch.where(drop, torch.full_like(text_rows, negative), text_rows)
        x0 = latents[idx.to(device)]
        noise = torch.randn(x0.shape, generator=g).to(device)
        sigma = sample_sigmas(config.batch_size, g).to(device)
        x_t = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        pred = model(
            hidden_states=x_t,
            encoder_hidden_states=tokens[text_rows],
            pooled_projections=pooled[text_rows],
            timestep=sigma,
            img_ids=img_ids,
            txt_ids=txt_ids,
            return_dict=False,
        )[0]
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1 - config.ema_decay)
        if checkpoints is not None and (step + 1) % checkpoint_every == 0 and step + 1 < config.steps:
            wall, cpu = wall_before + time.monotonic() - started, cpu_before + time.process_time() - cpu_started
            checkpoints.save(*_training_state(step + 1, config, model, ema, opt, g, wall, cpu))
        if on_step is not None:
            on_step(step, loss.item())
        if step % 100 == 0 or step == config.steps - 1:
            elapsed = wall_before + time.monotonic() - started
            logger.info("transformer step %d/%d loss %.4f (%.0f s)", step, config.steps, loss.item(), elapsed)
    if checkpoints is not None:
        checkpoints.clear()
    return ema.eval().to("cpu")


def _training_state(
    step: int,
    config: VideoTransformerTrainConfig,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    opt: torch.optim.Optimizer,
    g: torch.Generator,
    wall_s: float,
    cpu_s: float,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The whole state of a transformer run after `step` steps, as (tensors, JSON state) for `FileCheckpoints`."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    for index, entry in opt.state_dict()["state"].items():
        tensors.update({f"opt.{index}.{k}": torch.as_tensor(v) for k, v in entry.items()})
    tensors["rng"] = g.get_state()
    state = {"step": step, "config": asdict(config), "wall_s": wall_s, "cpu_s": cpu_s}
    return tensors, state


def _restore_training_state(
    saved: tuple[dict[str, torch.Tensor], dict[str, Any]],
    config: VideoTransformerTrainConfig,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    opt: torch.optim.Optimizer,
    g: torch.Generator,
) -> tuple[int, float, float]:
    """Loads a `_training_state` into the run's objects; returns (next step, wall s, CPU s spent before)."""
    tensors, state = saved
    if state.get("config") != asdict(config):
        raise ValueError(f"checkpoint is of another run: {state.get('config')} != {asdict(config)}")

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    model.load_state_dict(part("model."))
    ema.load_state_dict(part("ema."))
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in part("opt.").items():
        index, name = key.split(".", 1)
        entries.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": entries, "param_groups": opt.state_dict()["param_groups"]})
    g.set_state(tensors["rng"])
    return int(state["step"]), float(state["wall_s"]), float(state["cpu_s"])
