"""GPU benchmark at real sizes: full FLUX.1-dev and Open-Sora 2.0 transformers with RANDOM weights (no download).

Usage: python bench/gpu.py [--smoke] [--out FILE] [--device cuda|cpu] [--models flux open-sora] [--skip-train]
                           [--no-offload] [--offload-train] [--repeats N] [--train-steps N]
Prints one JSON document (and writes it to `--out`): the device, dtype, torch/diffusers versions and these figures.

Models. FLUX.1-dev shapes (diffusers `FluxTransformer2DModel`: 19 double + 38 single blocks, 3072 wide, 24 heads x
128, T5 context 4096, CLIP pooled 768, guidance embedding) and this project's Open-Sora 2.0 port
(`OpenSoraTransformer3DModel`, the same dims plus `cond_embedder`, no guidance embedding). Each is built on the meta
device, materialised with `to_empty` on the target device and initialised there (normal(0, 1/sqrt(fan_in)) for
matrices, ones for norm scales, zeros for biases): bf16 on CUDA, float32 on CPU. One model lives at a time.

Figures (timings: median of `--repeats`, after one warm-up; CUDA work is bracketed by `torch.cuda.synchronize()`):
- `ice_solve`: the ICE closed form (`dissociation_operator` + `layer_delta`) for the family's two text layers at the
  model's widths, from 1,000 erase and 10,000 preserve rows (as bench/ice.py), text encoding excluded, on the CPU:
  where the service solves it on every host (the family encoders hand the solver float32 CPU tensors).
  `ice_solve_on_device` (GPU runs only) tries the same on the device; the kernel makes some CPU tensors itself
  (`torch.eye`, `torch.tensor` without a device), so expect an `error` there until the core moves them.
- `swap`: `AdapterHost.activate` on the model (what the service does per request group): switching among 8 sets of
  one erasure and among 8 sets of four, first activation (fuses the set's factors once) and cached. An erasure here
  is an ICE-like part (rank 48 on the two text layers) plus a LoRA-like part (rank 8 on the family's `text_qk`
  targets: `attn.add_q_proj` / `add_k_proj` of every double block): the cost of the largest erasure kinds at once.
- `denoise_step`: one transformer forward, batch 1, no grad (one step of the sampler, guidance-distilled Flux at
  1024x1024 = 4096 image + 512 text tokens; Open-Sora at 256px x 129 frames = 33 latent frames x 16 x 16 = 8448 video
  + 512 text tokens), with no erasure, a set of 1 and a set of 4 active; `offloaded` repeats it with diffusers' block-
  level group offload (weights stay on the CPU and move to the device one block at a time; the erasure factors are
  attached before offloading, so they stay on the device).
- `train_step` (Flux only: the Open-Sora family has no training ops yet): one EraseAnything++ step
  (`EraseAnythingTrainer.train_step`: forget and retain losses, backward, AdamW, the EUPMU re-evaluation) with the
  published defaults (rank-8 LoRA on `text_qk`, batch 1, 28 sample steps, 3 irrelevant words) at 512 and 1024 px, on
  a FluxPipeline assembled from the random transformer, tiny random CLIP/T5 encoders of the real output widths
  (768 pooled, 4096 per token, 512 T5 tokens), the demo world's tokenizer and a tiny VAE config (the trainer never
  decodes). `concept_images` is 1 (it only sizes the set-up, which samples that many base images); the set-up's
  seconds are reported apart. A step's cost varies with the random partial-sampling depth of its forget loss
  (0..27 no-grad forwards), so every step's seconds are listed. Peak memory: `torch.cuda.max_memory_allocated()`
  over the steps (set-up excluded; like every `peak_mib` here it includes the resident weights); on CPU the
  process's peak RSS so far (`ru_maxrss`, never decreasing) instead.
  Out-of-memory is a result (`"oom": true`), not a crash; any other failure of one figure is recorded as `error`.
  Training under group offload runs only with `--offload-train` (expected to fail on CUDA: offload swaps each
  parameter's storage, which the weights saved for backward do not follow); gradient checkpointing is not offered
  (the trainer's attention capture swaps a block's processor for the forward only, so recomputation differs).

Not yet run on a GPU (none was available when it was written); estimated a few minutes on one H100, most of it the
offloaded steps and the 1024 px training (`--no-offload`, `--skip-train`, `--models` shorten it).

`--smoke` shrinks every size (2 + 2 blocks, width 32, short sequences, fewer rows and repeats) so the whole run
takes well under a minute on a 2-core CPU while exercising every code path (with `--offload-train`), offload
included (CPU to CPU there).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from erasure_core.adapters import AdapterHost
from erasure_core.artifacts import ErasureArtifact, LowRankDelta
from erasure_core.families import FAMILIES
from erasure_core.methods.ice.config import ICEConfig
from erasure_core.methods.ice.kernel import dissociation_operator, layer_delta

logger = logging.getLogger("bench.gpu")

ICE_RANK, LORA_RANK = 48, 8
N_SETS = 8  # distinct sets cycled through when timing swaps
TRANSFORMER_DIMS = {"num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128, "num_attention_heads": 24}
TEXT_DIMS = {"joint_attention_dim": 4096, "pooled_projection_dim": 768}


@dataclass(frozen=True)
class Scale:
    """Every size the run uses; `FULL` is the real thing, `SMOKE` the same code paths in miniature."""

    name: str
    dims: dict[str, Any]  # transformer dims shared by both families
    axes_dims_rope: tuple[int, int, int]
    text_tokens: int
    image_px: int  # the denoising step's image size (Flux latents: px / 8, packed 2x2)
    video_px: int
    video_frames: int  # pixel frames (latent frames = (F - 1) / 4 + 1)
    train_px: tuple[int, ...]
    erase_rows: int
    preserve_rows: int
    repeats: int
    train_steps: int
    train_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def hidden(self) -> int:
        return int(self.dims["attention_head_dim"] * self.dims["num_attention_heads"])


FULL = Scale(
    "full",
    {**TRANSFORMER_DIMS, **TEXT_DIMS},
    (16, 56, 56),
    text_tokens=512,
    image_px=1024,
    video_px=256,
    video_frames=129,
    train_px=(512, 1024),
    erase_rows=1000,
    preserve_rows=10_000,
    repeats=5,
    train_steps=3,
)
SMOKE = Scale(
    "smoke",
    {"num_layers": 2, "num_single_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2}
    | {"joint_attention_dim": 64, "pooled_projection_dim": 32},
    (4, 6, 6),
    text_tokens=16,
    image_px=64,
    video_px=32,
    video_frames=9,
    train_px=(32, 64),
    erase_rows=40,
    preserve_rows=200,
    repeats=2,
    train_steps=1,
    train_overrides={"sample_steps": 2},
)


# ---- device helpers ----------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_s(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: bool = True) -> float:
    """Median wall seconds of `fn` (after one warm-up), each run bracketed by device synchronisation."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> dict[str, Any]:
    """Peak memory since `reset_peak`: device memory on CUDA; on CPU the process's peak RSS so far (Linux KiB)."""
    if device.type == "cuda":
        return {"peak_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1), "memory": "cuda_max_allocated"}
    return {"peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "memory": "process_rss"}


@contextlib.contextmanager
def recorded(figures: dict[str, Any], key: str) -> Iterator[dict[str, Any]]:
    """Runs one figure; an out-of-memory or any other failure becomes part of the result instead of ending the run."""
    entry: dict[str, Any] = {}
    try:
        yield entry
    except torch.OutOfMemoryError as e:
        entry.update(oom=True, error=str(e).splitlines()[0])
        logger.warning("%s: out of memory", key)
    except Exception as e:  # noqa: BLE001 - one figure failing must not lose the others
        entry["error"] = f"{type(e).__name__}: {e}"
        logger.exception("%s failed", key)
    finally:
        figures[key] = entry
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---- random models -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@torch.no_grad()
def init_random(model: nn.Module, seed: int) -> None:
    """Weights as a fresh model would draw them (scale 1/sqrt(fan_in)), generated on the model's device."""
    first = next(model.parameters())
    g = torch.Generator(device=first.device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            p.normal_(0.0, p.shape[1] ** -0.5, generator=g)
        elif name.endswith("bias"):
            p.zero_()
        else:  # RMSNorm / LayerNorm scales
            p.fill_(1.0)
    for _, b in model.named_buffers():  # to_empty leaves buffers as garbage; none of these models needs any
        b.zero_()


def meta_transformer(family: str, scale: Scale, dtype: torch.dtype) -> nn.Module:
    """The family's transformer at `scale` on the meta device: shapes only, no memory."""
    kwargs: dict[str, Any] = {**scale.dims, "axes_dims_rope": scale.axes_dims_rope, "in_channels": 64}
    with torch.device("meta"), default_dtype(dtype):
        if family == "flux":
            from diffusers import FluxTransformer2DModel

            return FluxTransformer2DModel(patch_size=1, guidance_embeds=True, **kwargs)
        from erasure_core.pipelines.open_sora.transformer_open_sora import OpenSoraTransformer3DModel

        return OpenSoraTransformer3DModel(patch_size=2, **kwargs)


def build_transformer(family: str, scale: Scale, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The family's transformer at `scale`, random, materialised directly on `device` in `dtype`."""
    model = meta_transformer(family, scale, dtype)
    model.to_empty(device=device)
    init_random(model, seed=0)
    return model.eval().requires_grad_(False)


def grid_ids(t: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """(t, h, w) integer positions of packed tokens, [t*h*w, 3] (Flux uses t = 0)."""
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([tt, hh, ww], dim=-1).reshape(-1, 3).float().to(device)


def step_inputs(family: str, scale: Scale, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One sampler step's transformer inputs, batch 1 (Flux: packed 2x2 latents of px/8; Open-Sora: px/8 latents
    of (F-1)/4+1 frames, patch 2)."""
    g = torch.Generator().manual_seed(1)
    if family == "flux":
        t, side = 1, scale.image_px // 16
    else:
        t, side = (scale.video_frames - 1) // 4 + 1, scale.video_px // 16
    n = t * side * side
    batch = {
        "hidden_states": torch.randn(1, n, 64, generator=g),
        "encoder_hidden_states": torch.randn(1, scale.text_tokens, scale.dims["joint_attention_dim"], generator=g),
        "pooled_projections": torch.randn(1, scale.dims["pooled_projection_dim"], generator=g),
        "timestep": torch.tensor([0.5]),
    }
    if family == "flux":
        batch["guidance"] = torch.tensor([3.5])
    out = {k: v.to(device, dtype) for k, v in batch.items()}
    out["img_ids"] = grid_ids(t, side, side, device)
    out["txt_ids"] = torch.zeros(scale.text_tokens, 3, device=device)
    return out


def random_erasure(model: nn.Module, family: str, seed: int) -> ErasureArtifact:
    """An ICE-like part on the text layers and a LoRA-like part on the `text_qk` targets (see the module doc)."""
    fam = FAMILIES[family]
    g = torch.Generator().manual_seed(seed)
    deltas = {}
    parts: list[tuple[list[str], int]] = [
        (list(fam.edited_layers), ICE_RANK),
        (fam.resolve_lora_targets(model, "text_qk"), LORA_RANK),
    ]
    for names, rank in parts:
        for name in names:
            linear = model.get_submodule(name)
            assert isinstance(linear, nn.Linear)
            out_f, in_f = linear.weight.shape
            a = torch.randn(rank, in_f, generator=g) / in_f**0.5
            deltas[name] = LowRankDelta(a, 0.01 * torch.randn(out_f, rank, generator=g))
    return ErasureArtifact(deltas, {"method": "bench", "family": family})


# ---- figures -----------------------------------------------------------------------------------------------------


def _rows(n: int, d: int, rank: int, g: torch.Generator) -> torch.Tensor:
    """Structured rows like text-encoder states: a low-rank signal, a shared mean and noise (as bench/ice.py)."""
    basis = torch.randn(rank, d, generator=g) / d**0.5
    return (
        torch.randn(n, rank, generator=g) @ basis
        + 0.05 * torch.randn(d, generator=g)
        + 0.01 * torch.randn(n, d, generator=g)
    )


def ice_solve(scale: Scale, device: torch.device, repeats: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    spaces = {"context_embedder": scale.dims["joint_attention_dim"], "pooled": scale.dims["pooled_projection_dim"]}
    kwargs = ICEConfig().kernel_kwargs()
    work = []
    for d in spaces.values():
        signal = min(256, d // 2)
        x_a = _rows(scale.erase_rows, d, signal, g)
        x_c = x_a + _rows(scale.erase_rows, d, min(24, d // 4), g)
        x_p = _rows(scale.preserve_rows, d, signal, g)
        w = torch.randn(scale.hidden, d, generator=g) / d**0.5
        work.append(tuple(t.to(device) for t in (x_c, x_a, x_p, w)))

    def run() -> None:
        for x_c, x_a, x_p, w in work:
            v, m = dissociation_operator(x_c, x_a, x_p, **kwargs)
            layer_delta(w, v, m)

    return {
        "median_s": round(median_s(run, device, repeats), 4),
        "erase_rows": scale.erase_rows,
        "preserve_rows": scale.preserve_rows,
        "widths": {**spaces, "hidden": scale.hidden},
        "dtype": "float32",
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def set_names(n_sets: int, size: int) -> list[tuple[str, ...]]:
    """`n_sets` distinct sets of `size` erasures over the attached names e0, e1, ..."""
    return [tuple(f"e{(i * size + j) % (n_sets * size)}" for j in range(size)) for i in range(n_sets)]


def swap(host: AdapterHost, device: torch.device, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in (1, 4):
        sets = set_names(N_SETS, size)
        first = []
        for names in sets:
            sync(device)
            start = time.perf_counter()
            host.activate(names)
            sync(device)
            first.append(time.perf_counter() - start)
        cached = []
        for _ in range(rounds):
            for names in sets:
                sync(device)
                start = time.perf_counter()
                host.activate(names)
                sync(device)
                cached.append(time.perf_counter() - start)
        out[f"set_of_{size}"] = {
            "first_activation_ms": round(1e3 * statistics.median(first), 4),
            "cached_ms": round(1e3 * statistics.median(cached), 4),
        }
    host.activate([])
    out["fused_mib"] = round(host.fused_nbytes / 2**20, 2)
    return out


def denoise_step(
    model: nn.Module, host: AdapterHost, batch: dict[str, torch.Tensor], device: torch.device, repeats: int
) -> dict[str, Any]:
    """Forward seconds with no erasure, a set of 1 and a set of 4 (each set made active before timing)."""
    out: dict[str, Any] = {"tokens": int(batch["hidden_states"].shape[1] + batch["txt_ids"].shape[0])}
    reset_peak(device)
    last: dict[str, torch.Tensor] = {}
    for label, names in (("none", ()), ("set_of_1", ("e0",)), ("set_of_4", ("e0", "e1", "e2", "e3"))):
        host.activate(names)

        def forward(label: str = label) -> None:
            with torch.no_grad():
                last[label] = model(**batch, return_dict=False)[0]

        out[f"{label}_s"] = round(median_s(forward, device, repeats), 4)
    host.activate([])
    out["set_of_1_vs_none"] = round(out["set_of_1_s"] / out["none_s"], 4)
    out["set_of_4_vs_none"] = round(out["set_of_4_s"] / out["none_s"], 4)
    # Checked after timing (each check synchronises): the outputs are numbers, and the active sets were applied.
    out["output_finite"] = all(bool(torch.isfinite(y).all()) for y in last.values())
    out["set_changes_output"] = bool((last["set_of_4"] - last["none"]).abs().max() > 0)
    return {**out, **peak_mib(device)}


def offload(model: nn.Module, device: torch.device) -> None:
    """diffusers' block-level group offload: parameters live on the CPU and visit `device` one block at a time."""
    model.enable_group_offload(  # type: ignore[operator]
        onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1
    )


# ---- training ----------------------------------------------------------------------------------------------------


def flux_pipeline(transformer: nn.Module, scale: Scale, px: int, device: torch.device, dtype: torch.dtype) -> Any:
    """A FluxPipeline around the random transformer: tiny random text encoders of the real output widths, the demo
    world's (BERT) tokenizer in both slots, FLUX.1-dev's scheduler config, a tiny VAE config of native size `px`."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import BertTokenizerFast, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from erasure_core.worlds.text import encoder_path

    torch.manual_seed(0)
    tokenizer = BertTokenizerFast.from_pretrained(str(encoder_path()), model_max_length=77)
    tokenizer_2 = BertTokenizerFast.from_pretrained(str(encoder_path()), model_max_length=scale.text_tokens)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=scale.dims["pooled_projection_dim"],
            intermediate_size=256,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=77,
            eos_token_id=tokenizer.sep_token_id,
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=tokenizer_2.vocab_size,
            d_model=scale.dims["joint_attention_dim"],
            d_kv=16,
            d_ff=256,
            num_layers=1,
            num_heads=4,
        )
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=px,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # fmt: skip
    for part in (clip, t5, vae):
        part.to(device, dtype).eval().requires_grad_(False)
    return FluxPipeline(scheduler, vae, clip, tokenizer, t5, tokenizer_2, transformer)


@contextlib.contextmanager
def no_new_hooks(model: nn.Module) -> Iterator[None]:
    """Removes every forward hook added to `model`'s modules inside the block (the trainer's LoRA hooks)."""
    before = {id(m): set(m._forward_hooks) for m in model.modules()}
    try:
        yield
    finally:
        for m in model.modules():
            for key in set(m._forward_hooks) - before.get(id(m), set()):
                del m._forward_hooks[key]


def train_step(pipe: Any, scale: Scale, device: torch.device) -> dict[str, Any]:
    """Set-up, then `train_steps` EraseAnything++ steps; seconds per step and the steps' peak memory."""
    from erasure_core.methods.eraseanything.config import EraseAnythingConfig
    from erasure_core.methods.eraseanything.trainer import EraseAnythingTrainer

    cfg = EraseAnythingConfig(concept_images=1, steps=scale.train_steps, **scale.train_overrides)
    with no_new_hooks(pipe.transformer):  # also when the set-up fails half-way (out of memory): no LoRA left behind
        sync(device)
        start = time.perf_counter()
        trainer = EraseAnythingTrainer(
            pipe, FAMILIES["flux"], cfg, keyword="cat", prompts=["a photo of a cat on a sofa"], synonyms=["kitten"],
            anchor="animal",
        )  # fmt: skip
        sync(device)
        setup_s = time.perf_counter() - start
        reset_peak(device)
        steps = []
        for _ in range(scale.train_steps):
            sync(device)
            start = time.perf_counter()
            logs = trainer.train_step()
            sync(device)
            steps.append(round(time.perf_counter() - start, 3))
    return {
        "setup_s": round(setup_s, 2),
        "step_s": steps,
        "median_step_s": round(statistics.median(steps), 3),
        "steps_done": trainer.step,
        "lora_moved": any(bool(b.detach().abs().max() > 0) for _, b in trainer.lora.params.values()),
        "loss_finite": all(isinstance(v, float) and v == v for v in logs.values()),
        "lora_params": sum(p.numel() for p in trainer.lora.parameters()),
        "config": {k: getattr(cfg, k) for k in ("rank", "target_set", "batch_size", "sample_steps", "irrelevant")},
        **peak_mib(device),
    }


# ---- the run -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Which optional parts run (see the module doc and `--help`)."""

    train: bool = True
    offload: bool = True
    offload_train: bool = False


OFFLOAD_TRAIN_SKIPPED = (
    "not run (--offload-train runs it): group offload swaps each parameter's storage (param.data) between CPU and "
    "device, which the weights autograd saved for backward do not follow, so it is expected to fail on CUDA"
)


def bench_model(family: str, scale: Scale, device: torch.device, dtype: torch.dtype, plan: Plan) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    reset_peak(device)
    start = time.perf_counter()
    model = build_transformer(family, scale, device, dtype)
    sync(device)
    figures["build"] = {
        "s": round(time.perf_counter() - start, 2),
        "params_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 4),
        "double_blocks": scale.dims["num_layers"],
        "single_blocks": scale.dims["num_single_layers"],
        "hidden": scale.hidden,
        **peak_mib(device),
    }
    host = AdapterHost.for_model(model)
    for i in range(N_SETS * 4):  # attached while the weights are on the device, so the factors are too
        host.attach(f"e{i}", random_erasure(model, family, seed=100 + i))
    batch = step_inputs(family, scale, device, dtype)
    with recorded(figures, "swap") as entry:
        entry.update(swap(host, device, rounds=scale.repeats * 10))
    with recorded(figures, "denoise_step") as entry:
        entry.update(denoise_step(model, host, batch, device, scale.repeats))
    trains = plan.train and family == "flux"  # the Open-Sora family has no training ops
    if trains:
        figures["train_step"] = train_all(model, scale, device, dtype)
    if plan.offload:  # last: diffusers has no public way to undo group offload
        offload(model, device)
        with recorded(figures, "denoise_step_offloaded") as entry:  # transfer-bound and steady: fewer repeats
            entry.update(denoise_step(model, host, batch, device, min(scale.repeats, 2)))
        if trains:
            offloaded = plan.offload_train
            skipped = {"skipped": OFFLOAD_TRAIN_SKIPPED}
            figures["train_step_offloaded"] = train_all(model, scale, device, dtype) if offloaded else skipped
    host.close()
    del model, host, batch
    return figures


def train_all(model: nn.Module, scale: Scale, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The training step at each size. Not with gradient checkpointing: the trainer captures attention by swapping
    the last double block's processor only for the forward, so backward would recompute that block differently."""
    out: dict[str, Any] = {}
    for px in scale.train_px:
        with recorded(out, f"{px}px") as entry:
            entry.update(train_step(flux_pipeline(model, scale, px, device, dtype), scale, device))
    return out


def environment(device: torch.device, dtype: torch.dtype, scale: Scale) -> dict[str, Any]:
    import diffusers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "scale": scale.name,
        "device": str(device),
        "device_name": name,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
    }


def quiet_libraries() -> None:
    """The tiny random text encoders and tokenizer make transformers/diffusers warn about what is intended here."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module="transformers")


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: every code path in under a minute on CPU")
    parser.add_argument("--out", type=Path, help="also write the JSON document here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", choices=["flux", "open-sora"], default=["flux", "open-sora"])
    parser.add_argument("--skip-train", action="store_true", help="leave out the EraseAnything++ training steps")
    parser.add_argument("--repeats", type=int, help="timed runs per figure (default: 5, smoke 2)")
    parser.add_argument("--train-steps", type=int, help="timed training steps per size (default: 3, smoke 1)")
    parser.add_argument("--no-offload", action="store_true", help="leave out the group-offloaded variants")
    parser.add_argument("--offload-train", action="store_true", help="also try training under group offload")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    scale = SMOKE if args.smoke else FULL
    scale = dataclasses.replace(
        scale, repeats=args.repeats or scale.repeats, train_steps=args.train_steps or scale.train_steps
    )
    quiet_libraries()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    plan = Plan(train=not args.skip_train, offload=not args.no_offload, offload_train=args.offload_train)
    started = time.perf_counter()
    result: dict[str, Any] = environment(device, dtype, scale)
    # The service solves ICE on the CPU (the family encoders hand the solver float32 CPU tensors) on every host.
    with recorded(result, "ice_solve") as entry:
        entry.update(ice_solve(scale, torch.device("cpu"), scale.repeats))
    if device.type != "cpu":  # the kernel as it is on the accelerator; an error here is a finding, not a crash
        with recorded(result, "ice_solve_on_device") as entry:
            entry.update(ice_solve(scale, device, scale.repeats))
    for family in args.models:
        logger.info("%s: building the random transformer (%s)", family, scale.name)
        result[family] = bench_model(family, scale, device, dtype, plan)
    result["runtime_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
