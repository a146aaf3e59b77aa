"""ICE on both demo worlds with only the concept named and the service's default settings (expansion on, strength
chosen by the self-check): a representative subset of the quality table (`bench/quality.py` prints all of it). The
bars are what holds today on both worlds with the same settings."""

from __future__ import annotations

import statistics

import pytest

from erasure_core.concepts import ConceptSpec
from erasure_core.models import load_engine
from erasure_core.worlds.evaluation import engine_generator
from erasure_core.worlds.flux_world import assemble_flux_world
from erasure_core.worlds.quality import FACTORS, WORLDS, compare, judged

CASES = {"shapes": ("triangle", "red"), "fills": ("star", "Velmora")}


@pytest.fixture(scope="module", params=list(CASES))
def world(request: pytest.FixtureRequest, cache_dir):
    quality_world = WORLDS[request.param]()
    engine = load_engine("flux", quality_world.model_source(cache_dir), device="cpu", cache_dir=cache_dir)
    return quality_world, engine


def test_ice_with_only_the_concept_named(world) -> None:
    quality_world, engine = world
    for case in (c for c in quality_world.cases if c.concept in CASES[quality_world.name]):
        samples = quality_world.samples(case, 3)
        base = judged(quality_world, engine_generator(engine), samples)
        engine.attach("q", engine.erase(ConceptSpec(concept=case.concept, kind=case.kind, expand=True)))
        try:
            erased = judged(quality_world, engine_generator(engine, ["q"]), samples)
        finally:
            engine.detach("q")
        result = compare(case, samples, base, erased, FACTORS[quality_world.name])
        figures = result.summary()
        print(quality_world.name, case.concept, figures)
        # The strength is the gentlest that the model's own check accepts: on the fills world a star keeps 4-7% of
        # its samples and 11% of held-out templates (one to three samples here) while no other shape moves.
        assert result.rates["target"] <= 0.10, figures
        assert result.rates["heldout_template"] <= 0.15, figures
        assert statistics.fmean(result.other_change.values()) >= -3.0, figures
        assert all(change >= -5.0 for change in result.factor_change.values()), figures


def test_the_self_check_reads_every_noise_level(cache_dir) -> None:
    """Diamond on the shapes world served as an ordinary folder (no bundled preserve corpus): averaged over the
    probe's two noise levels the self-check settled where 12% of the samples stayed diamonds (the lower level still
    read the concept); read at its worst level, it goes one setting further."""
    quality_world = WORLDS["shapes"]()
    engine = load_engine("flux", str(assemble_flux_world(cache_dir)), device="cpu", cache_dir=cache_dir)
    case = next(c for c in quality_world.cases if c.concept == "diamond")
    samples = [s for s in quality_world.samples(case, 3) if s.group == "target"]
    artifact = engine.erase(ConceptSpec(concept="diamond", expand=True))
    engine.attach("q", artifact)
    try:
        erased = judged(quality_world, engine_generator(engine, ["q"]), samples)
    finally:
        engine.detach("q")
    rate = sum(v[case.factor] == case.value for v in erased) / len(erased)
    assert rate <= 0.05, (rate, len(erased), artifact.metadata["stats"]["calibration"])


def test_the_strength_stops_where_more_buys_little(cache_dir) -> None:
    """Crescent on the fills world: at eta 1 it is already gone, and eta 2 lowers its survival by less than
    `SURVIVAL_SLACK` while costing the heart 14-22 points (36 samples over every colour, fill and caption
    template); the check keeps eta 1 (`selfcheck.plateaued`)."""
    from erasure_core.worlds import fills

    quality_world = WORLDS["fills"]()
    engine = load_engine("flux", quality_world.model_source(cache_dir), device="cpu", cache_dir=cache_dir)

    prompts = [fills.varied_caption("crescent", i) for i in range(24)]
    prompts += [fills.varied_caption("heart", i) for i in range(36)]
    seeds = list(range(7000, 7000 + len(prompts)))
    base = quality_world.judge(engine_generator(engine)(prompts, seeds))["shape"]
    artifact = engine.erase(ConceptSpec(concept="crescent", expand=True))
    engine.attach("q", artifact)
    try:
        erased = quality_world.judge(engine_generator(engine, ["q"])(prompts, seeds))["shape"]
    finally:
        engine.detach("q")
    crescents = sum(v == "crescent" for v in erased[:24]) / 24
    heart_change = 100 * (sum(v == "heart" for v in erased[24:]) - sum(v == "heart" for v in base[24:])) / 36
    stats = artifact.metadata["stats"]
    assert crescents <= 0.05, (crescents, stats["calibration"])
    assert heart_change >= -11.2, (heart_change, stats["eta"], stats["preserve_scale"])
