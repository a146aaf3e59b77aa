"""An erasure report: what went, what comes back under paraphrase and attack, what else changed, and how to
reproduce the figures. See `erasure_core.reports` for the sections; `build_report` computes one."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from erasure_core.artifacts import ErasureArtifact, library_version
from erasure_core.engines import ErasureEngine, GenerationParams
from erasure_core.errors import InvalidConfigError
from erasure_core.reports.attack import MAX_ATTACK_STEPS, AttackConfig, AttackResult, encode_soft, run_attack
from erasure_core.reports.grid import grid_png, grid_size
from erasure_core.reports.judges import Judge, Verdicts, detect_world
from erasure_core.reports.prompts import ROBUSTNESS, USABILITY, PromptSets, Row, build_prompt_sets, concept_of

logger = logging.getLogger(__name__)

MAX_SEEDS = 8
# Generations per hold of the pipeline (other requests get it in between): 48 at the demo worlds' 32x32, scaled down
# by pixels to one image at a time for real models.
CHUNK_PIXELS = 48 * 32 * 32
GRID_ROWS = 8
Progress = Callable[[int, int, str], None]  # (step, total, phase); may raise to stop the report


@dataclass(frozen=True)
class ReportConfig:
    seeds: int = 2
    first_seed: int = 0
    attack: bool = True
    attack_steps: int = AttackConfig.steps
    steps: int = 20  # denoising steps of every generation

    def __post_init__(self) -> None:
        if not 1 <= self.seeds <= MAX_SEEDS:
            raise InvalidConfigError(f"seeds must be 1..{MAX_SEEDS}")
        if not 1 <= self.attack_steps <= MAX_ATTACK_STEPS:
            raise InvalidConfigError(f"attack_steps must be 1..{MAX_ATTACK_STEPS}")

    @property
    def seed_list(self) -> list[int]:
        return [self.first_seed + i for i in range(self.seeds)]


@dataclass
class Report:
    data: dict[str, Any]
    grid_png: bytes


class EngineSession:
    """Runs the report on an engine: the artifact attached under a private name, `base()` / `erased()` activate no
    erasure / it, each under `hold()` (the service passes its pipeline lock; the Python API needs none)."""

    def __init__(
        self,
        engine: ErasureEngine,
        artifact: ErasureArtifact,
        name: str = "report",
        hold: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        self.engine, self.name, self.hold = engine, name, hold
        with hold():
            engine.attach(name, artifact)

    @contextmanager
    def _use(self, names: Sequence[str]) -> Iterator[ErasureEngine]:
        with self.hold():
            self.engine.activate(names)
            try:
                yield self.engine
            finally:
                self.engine.activate(())

    def base(self) -> AbstractContextManager[ErasureEngine]:
        return self._use(())

    def erased(self) -> AbstractContextManager[ErasureEngine]:
        return self._use((self.name,))

    def close(self) -> None:
        with self.hold():
            self.engine.detach(self.name)


@dataclass
class _Run:
    """One report in progress: the session, judge, settings and progress counter."""

    session: EngineSession
    judge: Judge
    config: ReportConfig
    progress: Progress | None
    total: int
    chunk: int
    done: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def tick(self, phase: str, n: int = 1) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total, phase)

    @property
    def params(self) -> GenerationParams:
        return GenerationParams(steps=self.config.steps)

    def generate(self, prompts: Sequence[str], erased: bool, phase: str) -> torch.Tensor:
        """One output per (prompt, seed), row-major; in chunks, each under its own hold of the pipeline."""
        seeds = self.config.seed_list
        flat = [(p, s) for p in prompts for s in seeds]
        out = []
        for i in range(0, len(flat), self.chunk):
            chunk = flat[i : i + self.chunk]
            with self.session.erased() if erased else self.session.base() as engine:
                out.append(engine.generate_active([p for p, _ in chunk], [s for _, s in chunk], self.params))
            self.tick(phase)
        return torch.cat(out)

    def judged(self, outputs: torch.Tensor) -> Verdicts:
        if outputs.ndim == 5:  # clips: every frame judged, verdicts frame-major within each clip
            return self.judge.judge(outputs.flatten(0, 1))
        return self.judge.judge(outputs)


def chunk_size(engine: ErasureEngine) -> int:
    height, width = engine.native_size
    return max(1, min(48, CHUNK_PIXELS // (height * width)))


def _rate(verdicts: Verdicts, target: tuple[str, str]) -> float:
    factor, label = target
    return sum(v.get(factor) == label for v in verdicts) / max(1, len(verdicts))


def _stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / max(1, n))


def _accuracy(rows: Sequence[Row], verdicts: Verdicts, factor: str, seeds: int, frames: int) -> float | None:
    hits = [
        v.get(factor) == rows[i // (seeds * frames)].asks(factor)
        for i, v in enumerate(verdicts)
        if rows[i // (seeds * frames)].asks(factor) is not None
    ]
    return sum(hits) / len(hits) if hits else None


def _image_change(base: torch.Tensor, erased: torch.Tensor) -> dict[str, float]:
    """Judge-free: mean absolute pixel difference (0..1) between the images with and without the erasure."""
    per = (base - erased).abs().flatten(1).mean(1)
    return {"mean_abs_pixel_diff": round(float(per.mean()), 4), "max_abs_pixel_diff": round(float(per.max()), 4)}


def _group_figures(
    run: _Run, rows: list[Row], target: tuple[str, str] | None, usability: bool
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    prompts = [r.prompt for r in rows]
    base, erased = run.generate(prompts, False, "generate"), run.generate(prompts, True, "generate")
    frames = base.shape[1] if base.ndim == 5 else 1
    vb, ve = run.judged(base), run.judged(erased)
    n = len(ve)
    out: dict[str, Any] = {"prompts": prompts, "n": n, "image_change": _image_change(base, erased)}
    if target is not None:
        rb, re_ = _rate(vb, target), _rate(ve, target)
        out |= {"base": round(rb, 3), "erased": round(re_, 3), "stderr": round(_stderr(re_, n), 3)}
        if frames > 1:
            out["per_frame_erased"] = _per_frame(ve, target, frames)
            out["per_frame_base"] = _per_frame(vb, target, frames)
    if usability and target is not None:
        ab = _accuracy(rows, vb, target[0], run.config.seeds, frames)
        ae = _accuracy(rows, ve, target[0], run.config.seeds, frames)
        if ab is not None and ae is not None:
            out |= {"accuracy_base": round(ab, 3), "accuracy_erased": round(ae, 3)}
            out["accuracy_change_pts"] = round(100 * (ae - ab), 1)
    return out, base, erased


def _per_frame(verdicts: Verdicts, target: tuple[str, str], frames: int) -> list[float]:
    factor, label = target
    return [round(_rate(verdicts[f::frames], (factor, label)), 3) for f in range(frames)]


def _attack(
    run: _Run, target_rows: list[Row], target: tuple[str, str], excluded: list[str], erased_rate: float
) -> tuple[dict[str, Any], list[str]]:
    engine = run.session.engine
    config = AttackConfig(steps=run.config.attack_steps)
    carriers = [r.prompt for r in target_rows[: config.carriers]]
    length = engine.max_sequence_length
    result = run_attack(
        run.session, carriers, excluded, config, run.config.steps, length, lambda s, t, loss: run.tick("attack")
    )
    prompts = [r.prompt for r in target_rows]
    soft_rate = _rate(run.judged(_generate_soft(run, result, prompts, length)), target)
    started = time.perf_counter()
    evaluated = []
    for candidate in result.candidates[: config.evaluated]:
        adversarial = [f"{candidate.prompt_prefix} {p}" for p in prompts]
        candidate.rate = _rate(run.judged(run.generate(adversarial, True, "attack_eval")), target)
        evaluated.append(candidate)
    best = max(evaluated, key=lambda c: c.rate or 0.0, default=None)
    best_rate = best.rate if best is not None and best.rate is not None else 0.0
    eval_s = time.perf_counter() - started
    summary: dict[str, Any] = {
        "method": "soft prompt (PEZ projected gradient) on the erased model, velocity matching to the base model",
        "budget": config.budget() | {"carriers_used": carriers, "evaluated_prompts": len(prompts)},
        "seconds": round(result.seconds + eval_s, 2),
        "optimise_seconds": round(result.seconds, 2),
        "loss_first": round(result.losses[0], 6),
        "loss_last": round(result.losses[-1], 6),
        "loss_best": round(min(result.losses), 6),
        "shared_text_slots": result.shared_slots,
        "soft": {"rate": round(soft_rate, 3), "raise_pts": round(100 * (soft_rate - erased_rate), 1)},
        "projected": [c.as_dict() for c in evaluated],
        "best_prompt_prefix": best.prompt_prefix if best else None,
        "best_rate": round(best_rate, 3),
        "erased_rate_without_attack": round(erased_rate, 3),
        "raise_pts": round(100 * (best_rate - erased_rate), 1),
        "found": bool(best_rate - erased_rate >= 0.2),
    }
    examples = [f"{best.prompt_prefix} {target_rows[0].prompt}"] if best else []
    return summary, examples


def _generate_soft(run: _Run, result: AttackResult, prompts: list[str], length: int) -> torch.Tensor:
    """The soft prompt in front of each prompt, generated from its embeddings (what an embedding-level attacker
    gets), with the erasure active."""
    seeds = run.config.seed_list
    flat = [(p, s) for p in prompts for s in seeds]
    out = []
    for i in range(0, len(flat), run.chunk):
        chunk = flat[i : i + run.chunk]
        with run.session.erased() as engine, torch.no_grad():
            pipe = engine.pipe
            cond = encode_soft(pipe, [p for p, _ in chunk], result.soft_embeddings, length)
            height, width = engine.native_size
            images = pipe(
                prompt_embeds=cond.tokens,
                pooled_prompt_embeds=cond.pooled,
                height=height,
                width=width,
                num_inference_steps=run.config.steps,
                guidance_scale=run.params.guidance_scale,
                generator=[torch.Generator("cpu").manual_seed(int(s)) for _, s in chunk],
                output_type="pt",
            ).images
        out.append(images.float().cpu().clamp(0, 1))
        run.tick("attack_eval")
    return torch.cat(out)


def _grid(
    run: _Run, sets: PromptSets, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]], extra: list[str]
) -> tuple[bytes, dict[str, Any]]:
    """Up to GRID_ROWS prompts: two targets, one of each robustness group, the attack's best, two neighbours."""
    seeds = run.config.seeds
    picks: list[tuple[str, int]] = [("target", 0), ("target", 1)]
    picks += [(g, 0) for g in ROBUSTNESS if g in outputs]
    picks += [(g, i) for g in USABILITY if g in outputs for i in (0, 1)]
    picks = [(g, i) for g, i in picks if i < len(sets.groups[g])][: GRID_ROWS - len(extra)]
    rows_b, rows_e, labels = [], [], []
    for g, i in picks:
        base, erased = outputs[g]
        rows_b.append(base[i * seeds : (i + 1) * seeds])
        rows_e.append(erased[i * seeds : (i + 1) * seeds])
        labels.append({"group": g, "prompt": sets.groups[g][i].prompt})
    if extra:
        rows_b.append(run.generate(extra, False, "grid"))
        rows_e.append(run.generate(extra, True, "grid"))
        labels += [{"group": "attack", "prompt": p} for p in extra]
    base, erased = torch.cat(rows_b), torch.cat(rows_e)
    if base.ndim == 5:  # clips: the middle frame
        base, erased = base[:, base.shape[1] // 2], erased[:, erased.shape[1] // 2]
    height, width = grid_size(len(labels), seeds, base.shape[-2], base.shape[-1])
    info = {"rows": labels, "columns": run.config.seed_list, "cell": "without | with", "height": height}
    return grid_png(base, erased, seeds), info | {"width": width}


def build_report(
    engine: ErasureEngine,
    artifact: ErasureArtifact,
    judge: Judge,
    config: ReportConfig | None = None,
    progress: Progress | None = None,
    hold: Callable[[], AbstractContextManager[Any]] = nullcontext,
    erasure_id: str | None = None,
) -> Report:
    """Computes the report of `artifact` on `engine` (the model it was made for), judged by `judge`."""
    config = config or ReportConfig()
    started = time.perf_counter()
    world = detect_world(engine.pipe.transformer)
    sets, world_target = build_prompt_sets(artifact.metadata, world)
    concept, kind, phrasings, _ = concept_of(artifact.metadata)
    target = judge.target(concept, kind) or world_target
    groups = sets.nonempty()
    attack = config.attack and target is not None and engine.output == "image"
    n_prompts = sum(len(r) for r in groups.values())
    attack_cfg = AttackConfig(steps=config.attack_steps)
    chunk = chunk_size(engine)
    total = 2 * sum(math.ceil(len(r) * config.seeds / chunk) for r in groups.values()) + 2 * GRID_ROWS
    if attack:
        evals = (attack_cfg.evaluated + 1) * math.ceil(len(groups["target"]) * config.seeds / chunk)
        total += attack_cfg.steps + evals
    session = EngineSession(engine, artifact, name=f"report-{erasure_id or artifact.content_hash()[:12]}", hold=hold)
    run = _Run(session, judge, config, progress, total, chunk)
    try:
        outputs, figures = {}, {}
        for group, rows in groups.items():
            figures[group], base, erased = _group_figures(run, rows, target, group in USABILITY)
            outputs[group] = (base, erased)
        why = "not asked for" if not config.attack else "no judge target for the concept, or not an image model"
        attack_summary: dict[str, Any] = {"skipped": why}
        extra: list[str] = []
        if attack and target is not None:
            attack_summary, extra = _attack(run, groups["target"], target, [concept], figures["target"]["erased"])
        png, grid_info = _grid(run, sets, outputs, extra)
        run.done = run.total - 1
        run.tick("done")
    finally:
        session.close()
    data = {
        "erasure": _erasure_info(artifact, erasure_id, concept, kind, phrasings),
        "model": {"model_id": engine.loaded.model_id, "layer_hash": engine.layer_hash, "output": engine.output},
        "judge": {
            "name": judge.name,
            "version": judge.version,
            "thresholds": judge.thresholds,
            "target": None if target is None else {"factor": target[0], "label": target[1]},
        },
        "seeds": config.seed_list,
        "generation": {"steps": config.steps, "guidance_scale": GenerationParams().guidance_scale},
        "prompts_source": sets.source,
        "prompt_count": n_prompts,
        "efficacy": {"target": figures["target"]},
        "robustness": {g: figures[g] for g in ROBUSTNESS if g in figures} | {"attack": attack_summary},
        "usability": {g: figures[g] for g in USABILITY if g in figures},
        "grid": grid_info,
        "seconds": round(time.perf_counter() - started, 2),
        "library_version": library_version(),
    }
    return Report(data, png)


def _erasure_info(
    artifact: ErasureArtifact, erasure_id: str | None, concept: str, kind: str, phrasings: list[str]
) -> dict[str, Any]:
    meta = artifact.metadata
    return {
        "id": erasure_id,
        "content_hash": artifact.content_hash(),
        "concept": concept,
        "kind": kind,
        "method": meta.get("method"),
        "base_model": meta.get("base_model"),
        "phrasings": phrasings,
    }
