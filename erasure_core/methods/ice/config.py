"""ICE hyperparameters."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from erasure_core.concepts import ConceptSpec

AUTO_ETA = 2.0
# Many objects erased together share one erase subspace, so each push adds to the others' side effects: with 100
# concepts (tests/test_many_concepts.py) eta 2 cost a kept shape 22 points, eta 1 removed both shapes and kept the
# rest within one sample; eta 0 left 44% of them.
AUTO_ETA_MANY = 1.0
DEFAULT_MAX_RANK = 128
PRESERVE_SCALE = {"onto_anchor": 4.0, "past_anchor": 16.0}
# The strengths (eta, preserve_scale) an object erased without an anchor is tried at, gentlest first; the self-check
# picks one on the model itself (`selfcheck.choose`). Why a ladder and not a constant: on the demo worlds the
# strength that erases a shape without touching the others differs per model and concept (a star goes at eta 1 and
# costs the other shapes 30 points at eta 4; a hexagon needs eta 2; the shapes world's prior shape, the circle, needs
# the strongest push), and the default of the first world (2, 16) cost the second world's shapes 12 points on average.
LADDER: tuple[tuple[float, float], ...] = ((0.0, 64.0), (1.0, 64.0), (2.0, 64.0), (2.0, 16.0), (4.0, 16.0))


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
        max_rank: cap on the erase basis size per text space (the delta's rank). None (default): 128, or 4 per
            phrasing when that is more (an erasure of 100 concepts needs room for each; capped by the space's width
            in the kernel): at 128, 100 concepts left one triangle in 18 and cost a kept shape 11 points.
        eta: how far past the anchor the concept is pushed (x_c -> x_a - eta (x_c - x_a)); ESD's negative guidance
            transposed to the text embeddings. None (default): for one object erased without an anchor, chosen
            with `preserve_scale` by the self-check from `LADDER` (see `self_check`); with the self-check off,
            `AUTO_ETA` (2); `AUTO_ETA_MANY` (1) when several objects are erased together; else 0 (onto the anchor).
            Why: mapped onto a content-free placeholder, an object lands on the
            model's prior for content-free prompts, which can be the object itself (the demo world draws circles for
            about half of them); pushing past the placeholder removes it. With an anchor the caller asked for that
            anchor, and an attribute (a colour, a style) has no such prior to escape: pushing a colour past "the"
            cost a shape 5.6 points in tests/test_ice.py. `python bench/ice.py --eta 0` (no anchor, 36 samples per
            word): the default (eta 2, preserve_scale 16) gave target 0.07, unnamed synonyms 0.21, other shapes
            0.824; eta 0 gave 0.24 / 0.36 / 0.825; UCE 0.21 / 0.35 / 0.821.
        mine_k: mined phrasings added when the spec asks to expand.
        self_check: measure the edit on the model itself (`selfcheck`: how much of the concept survives, how far
            the kept prompts move); the figures go into the artifact's stats. For an object erased without an anchor,
            with neither `eta` nor `preserve_scale` given, it also chooses the strength: the settings of `LADDER` are
            solved and measured gentlest first, and `selfcheck.choose` keeps one (off: the fixed defaults above).
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
    max_rank: int | None = Field(default=None, ge=1, le=4096)
    eta: float | None = Field(default=None, ge=0.0, le=10.0)
    mine_k: int = Field(default=6, ge=0, le=32)
    self_check: bool = True
    max_erase_rows: int = Field(default=4096, ge=16, le=65536)
    max_preserve_rows: int = Field(default=16384, ge=16, le=262144)

    def resolved_eta(self, spec: ConceptSpec | None = None) -> float:
        """`eta`, or for None the automatic choice for this concept (see the class docstring)."""
        if self.eta is not None:
            return self.eta
        if spec is None or spec.anchor is not None or spec.kind != "object":
            return 0.0
        return AUTO_ETA if len(spec.concepts) == 1 else AUTO_ETA_MANY

    def resolved_preserve_scale(self, spec: ConceptSpec | None = None) -> float:
        return self.preserve_scale_at(self.resolved_eta(spec))

    def preserve_scale_at(self, eta: float) -> float:
        """`preserve_scale`, or for None the weight that goes with `eta` (firmer when pushing past the anchor)."""
        if self.preserve_scale is not None:
            return self.preserve_scale
        return PRESERVE_SCALE["past_anchor" if eta > 0 else "onto_anchor"]

    def resolved_max_rank(self, n_phrasings: int = 1) -> int:
        return self.max_rank if self.max_rank is not None else max(DEFAULT_MAX_RANK, 4 * n_phrasings)

    def settings(self, spec: ConceptSpec, measurable: bool = True) -> list[tuple[float, float]]:
        """The (eta, preserve_scale) settings to try for `spec`: the ladder when the self-check chooses (and the
        family can run it: `measurable`), else the one fixed setting."""
        automatic = self.eta is None and self.preserve_scale is None and self.self_check and measurable
        if automatic and spec.kind == "object" and spec.anchor is None and len(spec.concepts) == 1:
            return list(LADDER)
        eta = self.resolved_eta(spec)
        return [(eta, self.preserve_scale_at(eta))]

    def basis_kwargs(self, n_phrasings: int = 1) -> dict[str, Any]:
        """The keyword arguments of `kernel.dissociation` (the setting-free part of the operator) for a concept
        erased through `n_phrasings` phrasings."""
        return {
            "alpha_e": self.alpha_erase,
            "alpha_p": self.alpha_preserve,
            "lam": self.lam,
            "mu": self.mu,
            "energy": self.energy,
            "max_rank": self.resolved_max_rank(n_phrasings),
        }

    def kernel_kwargs(
        self, spec: ConceptSpec | None = None, n_phrasings: int = 1, setting: tuple[float, float] | None = None
    ) -> dict[str, Any]:
        """The keyword arguments of `kernel.dissociation_operator` these settings stand for, for `spec`'s concept
        erased through `n_phrasings` phrasings (at `setting`, an (eta, preserve_scale) pair, when given)."""
        eta, preserve_scale = setting or (self.resolved_eta(spec), self.resolved_preserve_scale(spec))
        return {**self.basis_kwargs(n_phrasings), "preserve_scale": preserve_scale, "eta": eta}
