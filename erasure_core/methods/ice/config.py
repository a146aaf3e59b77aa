"""ICE hyperparameters."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from erasure_core.concepts import ConceptSpec

AUTO_ETA = 2.0
PRESERVE_SCALE = {"onto_anchor": 4.0, "past_anchor": 16.0}


class ICEConfig(BaseModel):
    """ICE hyperparameters (saved in the artifact's metadata).

    Attributes:
        alpha_erase: spectral expansion of the erase energies (1 = plain energy weighting; large = hard projector).
        alpha_preserve: spectral expansion of the preserve energies.
        lam: weight of the overlap-preservation term (0: no protection of directions shared with the preserve set).
        preserve_scale: weight of keeping every preserve row's output unchanged (UCE's preserve term). None
            (default): 16 where the concept is pushed past its anchor (eta > 0), whose larger move needs the firmer
            hold, else 4 (16 left 37% of a "red" erasure red).
        mu: ridge weight that makes the objective strongly convex (a unique, bounded solution).
        energy: fraction of the erase energy kept when truncating the erase basis.
        max_rank: cap on the erase basis size per text space (the delta's rank).
        eta: how far past the anchor the concept is pushed (x_c -> x_a - eta (x_c - x_a)); ESD's negative guidance
            transposed to the text embeddings. None (default): `AUTO_ETA` (2) for an object erased without an
            anchor, else 0 (onto the anchor). Why: mapped onto a content-free placeholder, an object lands on the
            model's prior for content-free prompts, which can be the object itself (the demo world draws circles for
            about half of them); pushing past the placeholder removes it. With an anchor the caller asked for that
            anchor, and an attribute (a colour, a style) has no such prior to escape: pushing a colour past "the"
            cost a shape 5.6 points in tests/test_ice.py. `python bench/ice.py --eta 0` (no anchor, 36 samples per
            word): the default (eta 2, preserve_scale 16) gave target 0.07, unnamed synonyms 0.21, other shapes
            0.824; eta 0 gave 0.24 / 0.36 / 0.825; UCE 0.21 / 0.35 / 0.821.
        mine_k: mined neighbour phrasings added when the spec asks to expand.
        max_erase_rows: cap on erase rows per space (largest-norm rows kept).
        max_preserve_rows: cap on preserve rows per space (evenly subsampled).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha_erase: float = Field(default=100.0, ge=1.0, le=1e6)
    alpha_preserve: float = Field(default=8.0, ge=1.0, le=1e6)
    lam: float = Field(default=0.25, ge=0.0, le=1e6)
    mu: float = Field(default=1e-3, gt=0.0, le=1e6)
    preserve_scale: float | None = Field(default=None, ge=0.0, le=1e6)
    energy: float = Field(default=0.999, gt=0.0, le=1.0)
    max_rank: int = Field(default=128, ge=1, le=1024)
    eta: float | None = Field(default=None, ge=0.0, le=10.0)
    mine_k: int = Field(default=6, ge=0, le=32)
    max_erase_rows: int = Field(default=4096, ge=16, le=65536)
    max_preserve_rows: int = Field(default=16384, ge=16, le=262144)

    def resolved_eta(self, spec: ConceptSpec | None = None) -> float:
        """`eta`, or for None the automatic choice for this concept (see the class docstring)."""
        if self.eta is not None:
            return self.eta
        return AUTO_ETA if spec is not None and spec.anchor is None and spec.kind == "object" else 0.0

    def resolved_preserve_scale(self, spec: ConceptSpec | None = None) -> float:
        if self.preserve_scale is not None:
            return self.preserve_scale
        return PRESERVE_SCALE["past_anchor" if self.resolved_eta(spec) > 0 else "onto_anchor"]

    def kernel_kwargs(self, spec: ConceptSpec | None = None) -> dict[str, Any]:
        """The keyword arguments of `kernel.dissociation_operator` these settings stand for, for `spec`'s concept."""
        return {
            "alpha_e": self.alpha_erase,
            "alpha_p": self.alpha_preserve,
            "lam": self.lam,
            "mu": self.mu,
            "preserve_scale": self.resolved_preserve_scale(spec),
            "energy": self.energy,
            "max_rank": self.max_rank,
            "eta": self.resolved_eta(spec),
        }
