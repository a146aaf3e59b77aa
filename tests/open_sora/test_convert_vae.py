"""The HunyuanVideo VAE of Open-Sora 2.0: the official key/shape manifest against diffusers, at full size on meta.

`official_vae_manifest` is written from Open-Sora's `AutoencoderKLCausal3D` constructors; `meta_vae_shapes` is
diffusers' `AutoencoderKLHunyuanVideo` built on the meta device. Neither allocates a weight.
"""

from __future__ import annotations

import math

import pytest

from erasure_core.pipelines.open_sora.convert_open_sora import CheckpointMismatchError
from erasure_core.pipelines.open_sora.vae_manifest import (
    OFFICIAL_VAE_CONFIG,
    OFFICIAL_VAE_PARAMETERS,
    check_vae_checkpoint,
    meta_vae_shapes,
    official_vae_manifest,
)
from erasure_core.worlds.video_world import VAE_CONFIG


@pytest.fixture(scope="module")
def full_manifest() -> dict[str, tuple[int, ...]]:
    return official_vae_manifest()


def test_every_official_key_and_shape_matches_diffusers_at_full_size(full_manifest):
    ours = meta_vae_shapes()
    assert set(full_manifest) == set(ours)
    assert {k: v for k, v in full_manifest.items() if ours[k] != v} == {}
    assert len(full_manifest) == 248
    assert sum(math.prod(shape) for shape in full_manifest.values()) == OFFICIAL_VAE_PARAMETERS == 246_478_803


def test_release_layout_facts(full_manifest):
    """Facts read in the official code: a 2 x latent encoder head, 3 resnets per up block, samplers in 3 blocks."""
    assert full_manifest["encoder.conv_out.conv.weight"] == (32, 512, 3, 3, 3)
    assert full_manifest["quant_conv.weight"] == (32, 32, 1, 1, 1)
    assert full_manifest["decoder.up_blocks.3.resnets.2.conv2.conv.weight"] == (128, 128, 3, 3, 3)
    assert full_manifest["encoder.mid_block.attentions.0.to_q.weight"] == (512, 512)
    samplers = sorted(k for k in full_manifest if "samplers.0.conv.conv.weight" in k)
    assert [k.split(".")[2] for k in samplers] == ["0", "1", "2"] * 2


def test_check_passes_on_the_release_manifest(full_manifest):
    assert check_vae_checkpoint(full_manifest) == full_manifest


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda m: m.pop("decoder.up_blocks.1.upsamplers.0.conv.conv.weight"), "missing key(s): decoder.up_blocks.1"),
        (lambda m: m.update({"vae.encoder.conv_in.conv.weight": (1,)}), "unexpected key(s): vae.encoder.conv_in"),
        (
            lambda m: m.update({"post_quant_conv.weight": (32, 32, 1, 1, 1)}),
            "post_quant_conv.weight has shape [32, 32, 1, 1, 1], expected [16, 16, 1, 1, 1]",
        ),
    ],
    ids=["missing", "unexpected", "wrong-shape"],
)
def test_a_bad_key_is_named(full_manifest, change, named):
    manifest = dict(full_manifest)
    change(manifest)
    with pytest.raises(CheckpointMismatchError, match="hunyuan_vae") as error:
        check_vae_checkpoint(manifest)
    assert named in str(error.value)


def test_the_video_demo_world_vae_follows_the_same_rules():
    """The manifest is a function of the config: the demo world's 3-block VAE (4x space, 4x time) matches too."""
    assert official_vae_manifest(VAE_CONFIG) == meta_vae_shapes(VAE_CONFIG)
    assert official_vae_manifest(VAE_CONFIG) != official_vae_manifest(OFFICIAL_VAE_CONFIG)
