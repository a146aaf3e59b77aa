"""UCE as a registered closed-form method (the baseline ICE is compared with), on the family's text layers.

Uses the same erase/anchor/preserve rows as ICE, so the comparison in bench/ice.py differs only in the solve.
The dense UCE update W* - W_old is stored exactly as a low-rank delta via its SVD.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from erasure_core.adapters import get_linear
from erasure_core.artifacts import ErasureArtifact, LowRankDelta
from erasure_core.checkpoints import CheckpointStore
from erasure_core.concepts import ConceptSpec
from erasure_core.methods.base import ErasureMethod, MethodContext, Progress
from erasure_core.methods.common import concept_rows, even_rows, expand, holding, with_also
from erasure_core.methods.uce.kernel import uce_solve


class UCEConfig(BaseModel):
    """UCE hyperparameters (defaults: the official repository's current values)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lamb: float = Field(default=0.5, ge=0.0, le=1e6)
    erase_scale: float = Field(default=1.0, ge=0.0, le=1e6)
    preserve_scale: float = Field(default=1.0, ge=0.0, le=1e6)
    mine_k: int = Field(default=6, ge=0, le=32)
    max_erase_rows: int = Field(default=4096, ge=16, le=65536)
    max_preserve_rows: int = Field(default=16384, ge=16, le=262144)


def _low_rank(delta: torch.Tensor, rtol: float = 1e-6) -> LowRankDelta:
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    k = max(1, int((s > s[0] * rtol).sum()))
    return LowRankDelta(vh[:k].float().contiguous(), (u[:, :k] * s[:k]).float().contiguous(), 1.0)


class UCE(ErasureMethod):
    name = "uce"
    config_cls = UCEConfig
    trained = False

    def compute(
        self,
        ctx: MethodContext,
        spec: ConceptSpec,
        config: Any,
        progress: Progress | None = None,
        checkpoints: CheckpointStore | None = None,
    ) -> ErasureArtifact:
        assert isinstance(config, UCEConfig)
        found = expand(ctx, spec, config.mine_k)
        phrasings = with_also(list(found.phrasings), spec)
        rows = concept_rows(ctx, holding(spec, found), phrasings)
        deltas: dict[str, LowRankDelta] = {}
        for space in ctx.family.text_spaces:
            c_e = even_rows(rows.erase[space.name], config.max_erase_rows)
            c_g = even_rows(rows.anchor[space.name], config.max_erase_rows)  # same length -> same indices
            c_p = even_rows(rows.preserve[space.name], config.max_preserve_rows)
            for layer in space.layers:
                w = get_linear(ctx.pipe.transformer, layer).weight.detach().float().cpu()
                w_new = uce_solve(
                    w,
                    c_e,
                    c_g,
                    c_p,
                    lamb=config.lamb,
                    erase_scale=config.erase_scale,
                    preserve_scale=config.preserve_scale,
                )
                deltas[layer] = _low_rank(w_new - w)
        if progress is not None:
            progress(1, 1, {})
        return ErasureArtifact(deltas, self.metadata(ctx, spec, config, phrasings))
