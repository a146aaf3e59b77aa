"""Open-Sora 2.0 text-to-video as a diffusers pipeline (`OpenSoraPipeline`).

Sampling follows hpcaitech/Open-Sora `opensora/utils/sampling.py` (`I2VDenoiser`, the default even for t2v):

* rectified-flow Euler from t = 1 to 0 with the resolution- and length-dependent shift
  alpha = lin(tokens per frame; 256 -> 1, 4096 -> 3) * sqrt(latent frames), t' = alpha t / (1 + (alpha - 1) t),
  applied as the static shift of `FlowMatchEulerDiscreteScheduler` (which must not use dynamic shifting);
* a batch of three passes: c = (prompt, image cond), u = (negative, image cond), u2 = (negative, zero cond), with
  v = u2 + g_img (u - u2) + g_txt (c - u); for text-to-video the image condition is zero, so u equals u2;
* optional guidance oscillation (g = 1 on odd steps from step 10), on by default as in the official config;
* prompts end with " {fps} FPS." and " {motion_score} motion score.", as `scripts/diffusion/inference.py` adds.

Text encoders need not be CLIP/T5: any transformers model with `pooler_output` (slot 1) and `last_hidden_state`
(slot 2) works; the second encoder runs on max-length padding with no attention mask, as Open-Sora does.

`save_pretrained` records our classes under their module paths; `OpenSoraPipeline.from_pretrained(folder)` resolves
them because importing this module imports the transformer module (diffusers only resolves non-diffusers libraries
that are already in `sys.modules`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.models.autoencoders import AutoencoderKLHunyuanVideo
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from erasure_core.pipelines.open_sora.convert_open_sora import convert_open_sora_lora
from erasure_core.pipelines.open_sora.transformer_open_sora import OpenSoraTransformer3DModel

logger = logging.getLogger(__name__)

MAX_T5_LENGTH = 512
MAX_CLIP_LENGTH = 77
OSCILLATION_START = 10
_FPS_SUFFIX = re.compile(r"\d+ FPS\.$")


@dataclass
class OpenSoraPipelineOutput(BaseOutput):
    """`frames`: [B, F, C, H, W] tensor ("pt"), array ("np"), list of PIL frame lists ("pil") or packed latents."""

    frames: torch.Tensor | np.ndarray | list[list[Any]]


def decorate_prompt(prompt: str, fps: int | None = 24, motion_score: int | str | None = 4) -> str:
    """Appends Open-Sora's " {fps} FPS." and " {motion_score} motion score." (None skips a part).

    Raises:
        ValueError: motion_score "dynamic" (the official LLM prompt refiner is not part of this pipeline).
    """
    if motion_score == "dynamic":
        raise ValueError("motion_score='dynamic' needs Open-Sora's LLM refiner; pass an integer score (1-15)")
    text = prompt.strip()
    if fps is not None:
        text = text if text.endswith(".") else text + "."
        text = text if _FPS_SUFFIX.search(text) else f"{text} {fps} FPS."
    if motion_score is not None:
        text = f"{text} {motion_score} motion score."
    return text


def shift_alpha(tokens_per_frame: int, latent_frames: int, base_shift: float = 1.0, max_shift: float = 3.0) -> float:
    """Open-Sora's schedule shift: linear in tokens per frame (256 -> 1, 4096 -> 3), times sqrt(latent frames)."""
    slope = (max_shift - base_shift) / (4096 - 256)
    return (slope * tokens_per_frame + base_shift - slope * 256) * math.sqrt(latent_frames)


def oscillated(scale: float, enabled: bool, step: int) -> float:
    """Guidance oscillation: the scale on even steps and before step 10, else 1."""
    if not enabled or step < OSCILLATION_START or step % 2 == 0:
        return scale
    return 1.0


def pack_latents(latents: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, T*(H/p)*(W/p), C*p*p], channel-major inside a patch (Open-Sora's `pack`)."""
    b, c, t, h, w = latents.shape
    x = latents.reshape(b, c, t, h // patch_size, patch_size, w // patch_size, patch_size)
    return x.permute(0, 2, 3, 5, 1, 4, 6).reshape(b, t * (h // patch_size) * (w // patch_size), -1)


def unpack_latents(packed: torch.Tensor, frames: int, height: int, width: int, patch_size: int) -> torch.Tensor:
    """Inverse of `pack_latents` for latent size (frames, height, width)."""
    b, _, d = packed.shape
    c = d // patch_size**2
    x = packed.reshape(b, frames, height // patch_size, width // patch_size, c, patch_size, patch_size)
    return x.permute(0, 4, 1, 2, 5, 3, 6).reshape(b, c, frames, height, width)


def video_ids(frames: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Integer (t, h, w) positions of the packed tokens, [frames*height*width, 3] (sizes in tokens)."""
    grid = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack(grid, dim=-1).reshape(-1, 3).to(device=device, dtype=dtype)


class OpenSoraPipeline(DiffusionPipeline):
    """Open-Sora 2.0 text-to-video.

    Args:
        scheduler (`FlowMatchEulerDiscreteScheduler`): Euler flow sampler; its static `shift` is set per call.
        vae (`AutoencoderKLHunyuanVideo`): the causal 3D VAE (latent frames = (F - 1) / ratio + 1).
        text_encoder (`PreTrainedModel`): pooled encoder (CLIP-L in Open-Sora 2.0), read via `pooler_output`.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer.
        text_encoder_2 (`PreTrainedModel`): per-token encoder (T5-XXL), read via `last_hidden_state`.
        tokenizer_2 (`PreTrainedTokenizerBase`): its tokenizer.
        transformer (`OpenSoraTransformer3DModel`): the MMDiT.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(
        self,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: AutoencoderKLHunyuanVideo,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder_2: PreTrainedModel,
        tokenizer_2: PreTrainedTokenizerBase,
        transformer: OpenSoraTransformer3DModel,
    ) -> None:
        super().__init__()
        self.register_modules(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )
        self.vae_scale_factor_spatial = int(getattr(vae.config, "spatial_compression_ratio", 8)) if vae else 8
        self.vae_scale_factor_temporal = int(getattr(vae.config, "temporal_compression_ratio", 4)) if vae else 4
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)

    # ----------------------------------------------------------------- defaults from the loaded model

    @property
    def patch_size(self) -> int:
        return int(self.transformer.config.patch_size)

    @property
    def default_max_sequence_length(self) -> int:
        """The second tokenizer's `model_max_length`, capped at 512 (T5's length in Open-Sora)."""
        length = getattr(self.tokenizer_2, "model_max_length", MAX_T5_LENGTH) or MAX_T5_LENGTH
        return int(min(length, MAX_T5_LENGTH))

    @property
    def native_size(self) -> tuple[int, int]:
        """Native (height, width) in pixels: the transformer's latent `sample_size` times the VAE's spatial ratio."""
        size = int(self.transformer.config.sample_size) * self.vae_scale_factor_spatial
        return size, size

    @property
    def native_num_frames(self) -> int:
        """Native frame count: (latent `sample_frames` - 1) * temporal ratio + 1 (129 for Open-Sora 2.0)."""
        return (int(self.transformer.config.sample_frames) - 1) * self.vae_scale_factor_temporal + 1

    # ----------------------------------------------------------------- LoRA

    def load_lora_weights(
        self, lora: str | Path | dict[str, torch.Tensor], adapter_name: str | None = None, **kwargs: Any
    ) -> None:
        """Loads a transformer LoRA: diffusers layout (`transformer.<module>.lora_A.weight`, our module names) or
        Open-Sora's own peft layout (`base_model.model.double_blocks.0.txt_attn.q_proj.lora_A.weight`), converted.

        Args:
            lora: a state dict or a `.safetensors` file.
            adapter_name: peft adapter name (default: diffusers picks one).
            **kwargs: passed to `transformer.load_lora_adapter` (e.g. `hotswap=True`).
        """
        from safetensors.torch import load_file

        state = dict(lora) if isinstance(lora, dict) else load_file(str(lora))
        if not any(key.startswith("transformer.") for key in state):
            state = convert_open_sora_lora(state, hidden_size=self.transformer.inner_dim)
        self.transformer.load_lora_adapter(state, prefix="transformer", adapter_name=adapter_name, **kwargs)

    def unload_lora_weights(self) -> None:
        """Removes every LoRA from the transformer (peft layers replaced by the base Linear modules)."""
        self.transformer.unload_lora()

    # ----------------------------------------------------------------- prompts

    def _pooled_embeds(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        length = int(
            min(getattr(self.tokenizer, "model_max_length", MAX_CLIP_LENGTH) or MAX_CLIP_LENGTH, MAX_CLIP_LENGTH)
        )
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        ).input_ids
        output = self.text_encoder(ids.to(self.text_encoder.device), output_hidden_states=False)
        if getattr(output, "pooler_output", None) is None:
            raise ValueError(f"text_encoder {type(self.text_encoder).__name__} returns no pooler_output")
        return output.pooler_output.to(device=device, dtype=self.transformer.dtype)

    def _token_embeds(self, prompts: list[str], max_sequence_length: int, device: torch.device) -> torch.Tensor:
        ids = self.tokenizer_2(
            prompts, padding="max_length", max_length=max_sequence_length, truncation=True, return_tensors="pt"
        ).input_ids
        # Open-Sora (like Flux) runs T5 on max-length padding with no attention mask.
        output = self.text_encoder_2(ids.to(self.text_encoder_2.device), output_hidden_states=False)
        return output.last_hidden_state.to(device=device, dtype=self.transformer.dtype)

    def encode_prompt(
        self,
        prompt: str | list[str],
        device: torch.device | None = None,
        num_videos_per_prompt: int = 1,
        max_sequence_length: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodes prompts as given (no suffix added: see `decorate_prompt`).

        Returns:
            (prompt_embeds [N, L, d_tokens], pooled_prompt_embeds [N, d_pooled]), N = len(prompt) * num_videos.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        device = device or self._execution_device
        length = max_sequence_length or self.default_max_sequence_length
        tokens = self._token_embeds(prompts, length, device)
        pooled = self._pooled_embeds(prompts, device)
        return (
            tokens.repeat_interleave(num_videos_per_prompt, dim=0),
            pooled.repeat_interleave(num_videos_per_prompt, dim=0),
        )

    # ----------------------------------------------------------------- checks and latents

    def check_inputs(self, prompt, height: int, width: int, num_frames: int, prompt_embeds, pooled_embeds) -> None:
        multiple = self.vae_scale_factor_spatial * self.patch_size
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple}, got {height}x{width}")
        ratio = self.vae_scale_factor_temporal
        if num_frames < 1 or (num_frames - 1) % ratio:
            raise ValueError(f"num_frames must be 1 + a multiple of {ratio} (e.g. {ratio * 8 + 1}), got {num_frames}")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of `prompt` and `prompt_embeds`")
        if prompt_embeds is not None and pooled_embeds is None:
            raise ValueError("`prompt_embeds` needs `pooled_prompt_embeds` too")
        if prompt is not None and not isinstance(prompt, str | list):
            raise ValueError(f"`prompt` must be a str or a list of str, got {type(prompt).__name__}")

    def latent_shape(self, batch_size: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        channels = self.transformer.config.in_channels // self.patch_size**2
        frames = (num_frames - 1) // self.vae_scale_factor_temporal + 1
        ratio = self.vae_scale_factor_spatial
        return (batch_size, channels, frames, height // ratio, width // ratio)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor + shift
        return self.vae.decode(latents, return_dict=False)[0]

    def _negatives(self, negative_prompt: str | list[str], num_prompts: int, num_videos: int) -> list[str]:
        if isinstance(negative_prompt, str):
            return [negative_prompt] * num_prompts * num_videos
        if len(negative_prompt) != num_prompts:
            raise ValueError(f"negative_prompt has {len(negative_prompt)} items but there are {num_prompts} prompts")
        return [n for n in negative_prompt for _ in range(num_videos)]

    def _text_batch(self, prompt, negative_prompt, suffix: dict, num_videos: int, max_len: int | None, embeds):
        """Prompt and negative embeddings stacked as the three passes (c, u, u2) = (prompt, negative, negative)."""
        device = self._execution_device
        tokens, pooled = embeds
        if tokens is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompts = [decorate_prompt(p, **suffix) for p in prompts]
            tokens, pooled = self.encode_prompt(prompts, device, num_videos, max_len)
        elif num_videos != 1:
            tokens = tokens.repeat_interleave(num_videos, dim=0)
            pooled = pooled.repeat_interleave(num_videos, dim=0)
        tokens, pooled = tokens.to(device), pooled.to(device)
        negatives = self._negatives(negative_prompt, tokens.shape[0] // num_videos, num_videos)
        neg_tokens, neg_pooled = self.encode_prompt(negatives, device, 1, tokens.shape[1])
        return torch.cat([tokens, neg_tokens, neg_tokens]), torch.cat([pooled, neg_pooled, neg_pooled])

    def _set_timesteps(self, num_inference_steps: int, latent_shape: tuple[int, ...], device) -> torch.Tensor:
        if self.scheduler.config.get("use_dynamic_shifting", False):
            raise ValueError("OpenSoraPipeline needs a scheduler with use_dynamic_shifting=False (it sets the shift)")
        tokens_per_frame = (latent_shape[3] // self.patch_size) * (latent_shape[4] // self.patch_size)
        self.scheduler.set_shift(shift_alpha(tokens_per_frame, latent_shape[2]))
        sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
        self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        return self.scheduler.timesteps

    # ----------------------------------------------------------------- sampling

    def _denoise(self, latents, shape, text, pooled, num_steps: int, guidance: dict, callback, attn_kwargs):
        """Euler steps on packed latents with the 3-pass guidance batch; returns the packed final latents."""
        device, dtype, p = self._execution_device, self.transformer.dtype, self.patch_size
        batch = shape[0]
        latents = pack_latents(latents.to(device=device, dtype=torch.float32), p)
        img_ids = video_ids(shape[2], shape[3] // p, shape[4] // p, device, dtype)
        txt_ids = torch.zeros(text.shape[1], 3, device=device, dtype=dtype)
        # Text-to-video: the image condition (mask + masked reference latents) is zero for all three passes.
        cond = torch.zeros(3 * batch, latents.shape[1], latents.shape[2] + p**2, device=device, dtype=dtype)
        timesteps = self._set_timesteps(num_steps, shape, device)
        for i, t in enumerate(self.progress_bar(timesteps)):
            velocity = self.transformer(
                hidden_states=latents.to(dtype).repeat(3, 1, 1),
                encoder_hidden_states=text,
                pooled_projections=pooled,
                timestep=(t / 1000).expand(3 * batch).to(dtype),
                img_ids=img_ids,
                txt_ids=txt_ids,
                cond_hidden_states=cond,
                joint_attention_kwargs=attn_kwargs,
                return_dict=False,
            )[0].float()
            c, u, u2 = velocity.chunk(3)
            g_txt = oscillated(guidance["text"][0], guidance["text"][1], i)
            g_img = oscillated(guidance["image"][0], guidance["image"][1], i)
            velocity = u2 + g_img * (u - u2) + g_txt * (c - u)
            latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
            if callback is not None:
                latents = callback(self, i, t, {"latents": latents, "prompt_embeds": text}).pop("latents", latents)
        return latents

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] = "",
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 3.0,
        text_oscillation: bool = True,
        image_oscillation: bool = True,
        fps: int | None = 24,
        motion_score: int | str | None = 4,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
    ) -> OpenSoraPipelineOutput | tuple:
        """Generates videos from text.

        Args:
            prompt: the prompt(s); the FPS and motion-score suffixes are added unless `fps` / `motion_score` is None.
            negative_prompt: used undecorated, as in Open-Sora (default "").
            height, width: pixels, multiples of VAE ratio * patch (16); default `native_size`.
            num_frames: 1 + a multiple of the VAE's temporal ratio; default `native_num_frames` (129).
            num_inference_steps: Euler steps (50).
            guidance_scale: text guidance g_txt (7.5). image_guidance_scale: image-condition guidance g_img (3.0).
            text_oscillation, image_oscillation: guidance 1 on odd steps from step 10 (official defaults: on).
            generator, latents: noise source, or unpacked initial latents [B, C, T, h, w].
            prompt_embeds, pooled_prompt_embeds: precomputed (already decorated) prompt embeddings.
            max_sequence_length: text tokens; default the second tokenizer's `model_max_length` capped at 512.
            output_type: "pil", "np", "pt" (frames [B, F, C, H, W] in [0, 1]) or "latent" ([B, C, T, h, w]).
            callback_on_step_end: called as fn(pipe, step, timestep, {"latents", "prompt_embeds"}) after each step.

        Returns:
            `OpenSoraPipelineOutput` (or a one-tuple with the frames).
        """
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        height = height or self.native_size[0]
        width = width or self.native_size[1]
        num_frames = num_frames or self.native_num_frames
        self.check_inputs(prompt, height, width, num_frames, prompt_embeds, pooled_prompt_embeds)
        device = self._execution_device

        embeds = (prompt_embeds, pooled_prompt_embeds)
        suffix = {"fps": fps, "motion_score": motion_score}
        text, pooled = self._text_batch(
            prompt, negative_prompt, suffix, num_videos_per_prompt, max_sequence_length, embeds
        )
        batch = text.shape[0] // 3
        shape = self.latent_shape(batch, num_frames, height, width)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        guidance = {"text": (guidance_scale, text_oscillation), "image": (image_guidance_scale, image_oscillation)}
        packed = self._denoise(
            latents, shape, text, pooled, num_inference_steps, guidance, callback_on_step_end, joint_attention_kwargs
        )
        latents = unpack_latents(packed, shape[2], shape[3], shape[4], self.patch_size)
        if output_type == "latent":
            frames = latents
        else:
            video = self._decode(latents)[:, :, :num_frames]
            frames = self.video_processor.postprocess_video(video, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return OpenSoraPipelineOutput(frames=frames)
