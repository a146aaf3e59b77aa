"""bench/gpu.py: the `--smoke` run goes through every code path and reports every figure with sane values, and the
full-size configuration really is FLUX.1-dev and Open-Sora 2.0 (checked on the meta device: shapes, no memory).

The smoke run is the real script as a subprocess (what CI and the lead run), on this CPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.py"
FAMILIES = ("flux", "open-sora")


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--offload-train", "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    printed = json.loads(run.stdout)
    assert json.loads(out.read_text()) == printed, "--out must hold the document printed on stdout"
    return printed


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1e9


def test_environment_fields(smoke: dict[str, Any]) -> None:
    assert smoke["scale"] == "smoke"
    assert smoke["device"] == "cpu" and smoke["dtype"] == "float32" and smoke["device_name"]
    assert smoke["torch"] == torch.__version__ and smoke["diffusers"]
    assert smoke["threads"] == 1
    assert positive(smoke["runtime_s"]) and smoke["runtime_s"] < 60, "--smoke must stay under a minute here"


def test_ice_solve(smoke: dict[str, Any]) -> None:
    ice = smoke["ice_solve"]
    assert "error" not in ice
    assert positive(ice["median_s"]) and ice["median_s"] < 5
    assert ice["erase_rows"] > 0 and ice["preserve_rows"] > ice["erase_rows"]


@pytest.mark.parametrize("family", FAMILIES)
def test_model_figures(smoke: dict[str, Any], family: str) -> None:
    figures = smoke[family]
    build = figures["build"]
    assert positive(build["params_b"]) and positive(build["s"]) and positive(build["peak_mib"])
    assert build["memory"] == "process_rss"  # on CPU; cuda_max_allocated on a GPU
    swap = figures["swap"]
    assert "error" not in swap
    for size in ("set_of_1", "set_of_4"):
        assert positive(swap[size]["first_activation_ms"]) and positive(swap[size]["cached_ms"])
        assert swap[size]["cached_ms"] < 50  # a cached switch is pointer assignments
    assert positive(swap["fused_mib"])
    for key in ("denoise_step", "denoise_step_offloaded"):
        step = figures[key]
        assert "error" not in step, step
        for label in ("none_s", "set_of_1_s", "set_of_4_s"):
            assert positive(step[label]) and step[label] < 10
        assert step["set_of_4_vs_none"] == pytest.approx(step["set_of_4_s"] / step["none_s"], rel=0.05)
        assert step["output_finite"] is True
        assert step["set_changes_output"] is True, "the timed erasure set must actually be applied"
    # Flux at 64 px: 4x4 packed latents + 16 text tokens; Open-Sora 9 frames at 32 px: 3 x 2 x 2 + 16.
    assert figures["denoise_step"]["tokens"] == {"flux": 32, "open-sora": 28}[family]


def test_training_figures(smoke: dict[str, Any]) -> None:
    assert "train_step" not in smoke["open-sora"]  # the Open-Sora family has no training ops (documented)
    for key in ("train_step", "train_step_offloaded"):
        sizes = smoke["flux"][key]
        assert set(sizes) == {"32px", "64px"}
        for figure in sizes.values():
            assert "error" not in figure, figure
            assert figure["steps_done"] == len(figure["step_s"]) == 1
            assert all(positive(s) for s in figure["step_s"]) and positive(figure["median_step_s"])
            assert isinstance(figure["setup_s"], float) and 0 <= figure["setup_s"] < 60
            assert figure["loss_finite"] is True and figure["lora_moved"] is True
            # rank 8 on add_q_proj and add_k_proj of 2 double blocks, 32 wide: 4 x 8 x (32 + 32)
            assert figure["lora_params"] == 2048
            assert figure["config"]["target_set"] == "text_qk"
            assert positive(figure["peak_mib"])


def test_full_size_is_flux_dev_and_open_sora_2() -> None:
    """The FULL scale builds the real architectures: parameter counts and a full-size forward, on the meta device."""
    bench = load_bench()
    expected = {
        "flux": (11_901_408_320, (1, 4096, 64)),  # FLUX.1-dev; 1024 px = 64 x 64 packed latents
        # Open-Sora 2.0 (../shared/reference/open-sora-2.md: 11,891,178,560 + cond_in 211,968); 256 px x 129 frames
        "open-sora": (11_891_390_528, (1, 33 * 16 * 16, 64)),
    }
    for family, (params, shape) in expected.items():
        model = bench.meta_transformer(family, bench.FULL, torch.bfloat16).eval().requires_grad_(False)
        assert sum(p.numel() for p in model.parameters()) == params
        assert next(model.parameters()).dtype == torch.bfloat16
        batch = bench.step_inputs(family, bench.FULL, torch.device("meta"), torch.bfloat16)
        assert batch["encoder_hidden_states"].shape == (1, 512, 4096)
        with torch.no_grad():
            out = model(**batch, return_dict=False)[0]
        assert tuple(out.shape) == shape
        erasure = bench.random_erasure(model, family, seed=0)
        assert len(erasure.deltas) == 2 + 2 * 19  # two text layers + add_q/add_k of 19 double blocks


def test_a_failing_figure_is_recorded_not_fatal() -> None:
    bench = load_bench()
    figures: dict[str, Any] = {}
    with bench.recorded(figures, "broken") as entry:
        entry["partial"] = 1
        raise RuntimeError("boom")
    assert figures["broken"]["error"] == "RuntimeError: boom" and figures["broken"]["partial"] == 1
