"""Guards (`erasure_core.methods.ice.guard`): a policy erasure applied on the output of the text-conditioning layers
holds above another erasure that remaps a concept onto it, where plain addition of deltas does not.

Demo world, fixed seeds, judged. The service refuses such remaps outright under a policy (tests/service/
test_policy.py); this checks the layer beneath that refusal, the one that holds for what no check names.
"""

from __future__ import annotations

import pytest
import torch

from erasure_core.concepts import ConceptSpec
from erasure_core.worlds.judge import SHAPE_CLASSES, judge_images
from erasure_core.worlds.shapes import COLOR_NAMES, SHAPES

SEEDS = range(4)


def rate(engine, judge, shape_word: str, target: str, erasures=(), guarded=()) -> float:
    prompts = [f"a {c} {shape_word}" for c in COLOR_NAMES for _ in SEEDS]
    seeds = [s for _ in COLOR_NAMES for s in SEEDS]
    verdict = judge_images(engine.generate(prompts, seeds, erasures=erasures, guarded=guarded), judge)
    return sum(SHAPE_CLASSES[i] == target for i in verdict.shapes.tolist()) / len(prompts)


@pytest.fixture(scope="module")
def erasures(demo_engine):
    made = {
        "policy": ConceptSpec(concept="triangle"),
        "remap": ConceptSpec(concept="square", anchor="triangle"),
        "chain_a": ConceptSpec(concept="square", anchor="wedge"),
        "chain_b": ConceptSpec(concept="wedge", anchor="triangle"),
    }
    artifacts = {name: demo_engine.erase(spec) for name, spec in made.items()}
    for name, artifact in artifacts.items():
        demo_engine.attach(f"guard-test-{name}", artifact)
    demo_engine.attach_guard(["guard-test-policy"], demo_engine.compute_guard([artifacts["policy"]]))
    yield {name: f"guard-test-{name}" for name in made}
    for name in made:
        demo_engine.detach(f"guard-test-{name}")


def test_a_guarded_policy_holds_above_remaps(demo_engine, judge, erasures) -> None:
    policy, remap, chain = erasures["policy"], erasures["remap"], (erasures["chain_a"], erasures["chain_b"])
    # Added up, the remap runs underneath the policy: squares come out as triangles.
    assert rate(demo_engine, judge, "square", "triangle", (remap, policy)) >= 0.5
    assert rate(demo_engine, judge, "square", "triangle", (*chain, policy)) >= 0.5
    # Guarded, the policy acts on what the layers produce, after the remap.
    assert rate(demo_engine, judge, "triangle", "triangle", (policy,), (policy,)) <= 0.05
    assert rate(demo_engine, judge, "square", "triangle", (remap, policy), (policy,)) <= 0.05
    assert rate(demo_engine, judge, "square", "triangle", (*chain, policy), (policy,)) <= 0.05


def test_a_guard_costs_the_other_shapes_no_more_than_the_erasure(demo_engine, judge, erasures) -> None:
    policy = erasures["policy"]
    for shape in (s for s in SHAPES if s != "triangle"):
        plain = rate(demo_engine, judge, shape, shape, (policy,))
        guarded = rate(demo_engine, judge, shape, shape, (policy,), (policy,))
        assert guarded >= plain - 0.05, (shape, plain, guarded)


def test_guards_detach_with_their_erasures_and_leave_the_base_model(demo_engine, erasures) -> None:
    prompts, seeds = ["a red square"], [3]
    base = demo_engine.generate(prompts, seeds)
    demo_engine.generate(
        prompts, seeds, erasures=(erasures["remap"], erasures["policy"]), guarded=(erasures["policy"],)
    )
    assert torch.equal(demo_engine.generate(prompts, seeds), base)
    assert any(erasures["policy"] in covered for covered in demo_engine.host.guards)
