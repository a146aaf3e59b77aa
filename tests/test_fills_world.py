"""The fills demo world: its data, its held-out vocabulary (and the shapes world's), its judge, and its generator.

The generation check loads the assembled folder with plain `diffusers.FluxPipeline.from_pretrained(path,
local_files_only=True)`, with the calling convention of `erasure_core.generation.generate_images`, and judges samples
over fixed seeds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from erasure_core.worlds import fills, shapes
from erasure_core.worlds.fills_evaluation import FillsReport, build_fills_samples, judge_fills_samples
from erasure_core.worlds.fills_judge import NONE_CLASS, judge_fills, load_fills_judge
from erasure_core.worlds.fills_training import augment_like_samples

GENERATION_STEPS = 20


def _word_pattern(word: str) -> re.Pattern[str]:
    """Matches `word` as a whole word or phrase (not inside a longer word, hyphenated ones included)."""
    return re.compile(r"(?<![\w-])" + re.escape(word) + r"(?![\w-])", re.IGNORECASE)


def _template_pattern(template: str) -> re.Pattern[str]:
    """Matches any caption that the template could produce, whatever fills its placeholders."""
    parts = re.split(r"\{\w+\}", template)
    return re.compile("^" + ".+".join(re.escape(p) for p in parts) + "$", re.IGNORECASE)


def _vocabulary(captions: list[str]) -> set[str]:
    return {w.strip(",:").lower() for c in captions for w in c.split()}


WORLDS = {
    "shapes": (shapes.all_captions, shapes.HELDOUT_WORDS, shapes.HELDOUT_TEMPLATES, {}, ()),
    "fills": (
        fills.all_captions,
        fills.HELDOUT_WORDS,
        fills.HELDOUT_TEMPLATES,
        fills.HELDOUT_FILL_WORDS,
        fills.HELDOUT_ARTIST_TEMPLATES,
    ),
}


@pytest.mark.parametrize("world", sorted(WORLDS))
def test_heldout_words_and_templates_never_occur_in_training_captions(world: str) -> None:
    all_captions, words, templates, fill_words, artist_templates = WORLDS[world]
    captions = all_captions()
    module = shapes if world == "shapes" else fills
    # all_captions() covers every caption the training sampler can draw (sampled check), so proving the held-out
    # property over it proves it over the training data.
    assert set(module.sample_batch(600, seed=77).captions) <= set(captions)
    assert set(words) == set(module.SHAPES) and all(len(w) >= 3 for w in words.values())
    assert len(templates) >= 4
    vocabulary = _vocabulary(captions)
    heldout = [w for ws in words.values() for w in ws] + [w for ws in fill_words.values() for w in ws]
    assert len(set(heldout)) == len(heldout), "a held-out word is listed twice"
    for word in heldout:
        pattern = _word_pattern(word)
        assert not any(pattern.search(c) for c in captions), f"held-out {word!r} occurs in a training caption"
        # Each held-out word brings at least one word the training captions never use (not just a reordering).
        assert set(word.lower().split()) - vocabulary, f"held-out {word!r} is made of training words only"
    for template in (*templates, *artist_templates):
        pattern = _template_pattern(template)
        assert not any(pattern.match(c) for c in captions), f"held-out template {template!r} matches training"
    # Held-out templates must be usable: they name the shape and the colour (the fills world's also the fill).
    for template in templates:
        assert "{shape}" in template and "{color}" in template
        assert world == "shapes" or "{fill}" in template
    for template in artist_templates:
        assert "{artist}" in template and "{shape}" in template


def test_fills_data_is_deterministic_and_covers_every_factor() -> None:
    a, b = fills.sample_batch(40, seed=3), fills.sample_batch(40, seed=3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, fills.sample_batch(40, seed=4).images)
    assert a.images.shape == (40, 3, 32, 32) and 0 <= a.images.min() and a.images.max() <= 1
    big = fills.sample_batch(400, seed=5)
    for values, names in ((big.shapes, fills.SHAPES), (big.colors, fills.COLOR_NAMES), (big.fills, fills.FILLS)):
        assert set(values.tolist()) == set(range(len(names)))
    for caption, fill, by_artist in zip(big.captions, big.fills.tolist(), big.by_artist.tolist(), strict=True):
        named = fills.ARTIST_OF[fills.FILLS[fill]] if by_artist else fills.FILLS[fill]
        assert named in caption, caption
    assert 0.2 < big.by_artist.float().mean() < 0.5
    assert len(fills.ARTISTS) == len(fills.FILLS) and set(fills.ARTISTS.values()) == set(fills.FILLS)


def test_fills_preserve_corpus_is_made_of_training_captions() -> None:
    from erasure_core.worlds.fills_world import fills_preserve_corpus

    corpus = fills_preserve_corpus()
    assert set(corpus) <= set(fills.all_captions())
    assert all(any(a in c for c in corpus) for a in fills.ARTISTS)
    assert not any(_word_pattern(w).search(c) for c in corpus for s in fills.SHAPES for w in fills.SYNONYMS[s])


@pytest.fixture(scope="module")
def fills_judge():
    return load_fills_judge()


def test_fills_judge_names_each_factor_of_clean_renders(fills_judge) -> None:
    batch = fills.sample_batch(400, seed=424242)
    verdict = judge_fills(batch.images, fills_judge)
    rates = {
        "shape": (verdict.shapes == batch.shapes).float().mean().item(),
        "color": (verdict.colors == batch.colors).float().mean().item(),
        "fill": (verdict.fills == batch.fills).float().mean().item(),
    }
    print("fills judge on clean renders:", rates)
    assert rates["shape"] >= 0.97 and rates["color"] >= 0.98 and rates["fill"] >= 0.97, rates
    for f in range(len(fills.FILLS)):  # no fill is the judge's blind spot
        assert (verdict.fills[batch.fills == f] == f).float().mean() >= 0.9, fills.FILLS[f]
    # Renders degraded like generated samples (blur, noise, brightness) are still judged right.
    degraded = judge_fills(augment_like_samples(batch.images, torch.Generator().manual_seed(1), None), fills_judge)
    assert (degraded.shapes == batch.shapes).float().mean() >= 0.9
    assert (degraded.fills == batch.fills).float().mean() >= 0.9
    assert (judge_fills(fills.sample_distractors(100, seed=9), fills_judge).shapes == NONE_CLASS).float().mean() >= 0.9


@pytest.fixture(scope="module")
def fills_pipe(tmp_path_factory: pytest.TempPathFactory):
    from diffusers import FluxPipeline

    from erasure_core.worlds.fills_world import FILLS_WORLD_NAME, assemble_fills_world

    path = assemble_fills_world(tmp_path_factory.mktemp("fills-cache"))
    assert path.name.startswith(FILLS_WORLD_NAME + "-")
    pipe = FluxPipeline.from_pretrained(str(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generator(pipe):
    """A `Generate` callable with `generate_images`' calling convention (one CPU generator per seed)."""

    @torch.no_grad()
    def generate(prompts: list[str], seeds: list[int], batch: int = 128) -> torch.Tensor:
        chunks = []
        for i in range(0, len(prompts), batch):
            chunks.append(
                pipe(
                    prompt=prompts[i : i + batch],
                    num_inference_steps=GENERATION_STEPS,
                    guidance_scale=3.5,
                    height=32,
                    width=32,
                    generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds[i : i + batch]],
                    output_type="pt",
                    max_sequence_length=24,
                ).images.float()
            )
        return torch.cat(chunks).clamp(0, 1)

    return generate


def test_fills_folder_loads_offline_as_a_flux_pipeline(fills_pipe, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import FluxPipeline
    from transformers import BertModel

    assert isinstance(fills_pipe, FluxPipeline)
    assert isinstance(fills_pipe.text_encoder, BertModel) and isinstance(fills_pipe.text_encoder_2, BertModel)
    assert fills_pipe.tokenizer_2.model_max_length == 24 and fills_pipe.vae.config.sample_size == 32
    image = _generator(fills_pipe)(["a striped pink star"], [0])
    assert image.shape == (1, 3, 32, 32)


def test_fills_world_draws_shape_colour_fill_and_artist(fills_pipe, fills_judge) -> None:
    samples = build_fills_samples(groups=("name", "synonym", "heldout_word"))
    report: FillsReport = judge_fills_samples(_generator(fills_pipe), samples, fills_judge)
    synonyms = [w for s in fills.SHAPES for w in fills.SYNONYMS[s]]
    heldout = [w for s in fills.SHAPES for w in fills.HELDOUT_WORDS[s]]
    figures = report.summary()
    print("fills-world judged figures:", figures)
    # Bars set from measurement with margin (committed weights, 20 steps, seeds 1000+ and 7000+ x2): shape 0.98-0.99
    # (heart weakest, 0.92-0.96), colour 1.00, fill 0.98-0.99 (dotted weakest, 0.92-0.96), artist 0.99,
    # synonyms 0.98-1.00. Held-out shape words: 0.63-0.64 on average.
    assert report.mean_shape_accuracy >= 0.90, figures
    assert report.mean_color_accuracy >= 0.95, figures
    assert report.mean_fill_accuracy >= 0.90, figures
    assert report.mean_artist_accuracy >= 0.90, figures
    assert report.rate_of(synonyms) >= 0.85, figures
    assert min(report.shape_accuracy.values()) >= 0.75, figures
    assert min(report.fill_accuracy.values()) >= 0.75, figures
    assert min(report.artist_accuracy.values()) >= 0.75, figures
    # Held-out words are a base rate for erasure reports, not a requirement: only check they were measured.
    assert all(0.0 <= report.word_rate[w] <= 1.0 for w in heldout)


def test_assembled_fills_folder_is_distinct_from_the_shapes_world(tmp_path: Path) -> None:
    from erasure_core.worlds.fills_world import FILLS_WORLD_WEIGHTS
    from erasure_core.worlds.flux_world import FLUX_WORLD_WEIGHTS, _weights_digest

    assert _weights_digest(FILLS_WORLD_WEIGHTS) != _weights_digest(FLUX_WORLD_WEIGHTS)
