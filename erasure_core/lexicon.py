"""Where the model itself places the words of a lexicon: the first stage of expansion.

A concept's unnamed synonyms are words the generator draws like the concept ("wedge" for a triangle in the demo
world, "pentagram" for a star), and the text encoder alone does not say which: measured on the demo worlds, the
in-training synonyms of a shape rank at the 12th-47th percentile of 3,000 vocabulary words by encoder similarity, but
in the top 1-4% once the encoded words are read through the transformer's own text input layer (`context_embedder`
for Flux), whose learned weights keep what the model uses. So every candidate word is encoded once per model ("a
{word}", the first `POSITIONS` token states, which is where a short prompt lives), read through the family's
per-token text layer, averaged over positions (see `_read_batch`), projected to at most `DIM` dimensions by a seeded
Gaussian projection when wider (Johnson-Lindenstrauss: cosines survive), centred on the lexicon's mean and
normalised. Nearest neighbours of a concept in that space, together with its nearest words by the text encoder's own
similarity (the same encodings without the model's layer: the concept's kind, see `ReadingIndex`), are the shortlist
that the velocity probe (`erasure_core.expansion`) then decides on: the model's own outputs, not this index, say what
draws the concept and what it draws differently.

The lexicon: the text encoder's whole-word vocabulary plus the most frequent English words (`wordfreq`, bundled data,
no download), because many synonyms are split into word pieces ("pent ##agram") and never appear whole in a
vocabulary. Encoding it costs one encoder pass per word (about 12 minutes for 47,614 words with the demo worlds'
MiniLM on one CPU thread shared by six jobs); the encodings are kept on disk per text encoder (`encoded_lexicon`,
shared by every model that uses it), the index per model (its text layer's hash), both written atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from erasure_core.paths import default_cache_dir

logger = logging.getLogger(__name__)

DEFAULT_SIZE = 50_000  # frequent English words added to the vocabulary (ERASURE_LEXICON_SIZE)
POSITIONS = 6  # token states kept per word: "a {word}" fits in 6 for nearly every word
DIM = 1024  # readings wider than this (3,072 at FLUX.1) are projected down; the demo worlds' are 128 wide
BATCH = 512
_WORD = re.compile(r"^[a-z][a-z-]{2,}$")
STOPWORDS = frozenset(
    "a an the of and or in on at to for with by from as is are was were be this that these those it its one two "
    "some any all no not very more most other such into over under up down out off".split()
)


def vocabulary_entries(tokenizer: Any) -> list[tuple[str, int]]:
    """Whole-word vocabulary entries and their ids (BERT "##" pieces and SentencePiece non-initial pieces dropped)."""
    entries = []
    for token, idx in tokenizer.get_vocab().items():
        word = token[1:] if token.startswith("\u2581") else token
        if not token.startswith("##") and _WORD.match(word) and word not in STOPWORDS:
            entries.append((word, idx))
    return entries


def vocabulary_words(tokenizer: Any) -> list[str]:
    """The words of `vocabulary_entries`."""
    return [word for word, _ in vocabulary_entries(tokenizer)]


def frequent_words(size: int) -> list[str]:
    """The `size` most frequent English words (lower-case letters only), or none when wordfreq is missing."""
    if size <= 0:
        return []
    try:
        from wordfreq import top_n_list
    except ImportError:  # an install without it still mines the encoder's own vocabulary
        logger.warning("wordfreq is not installed: expansion mines the tokenizer's whole words only")
        return []
    return [w for w in top_n_list("en", size) if _WORD.match(w) and w not in STOPWORDS]


def lexicon(tokenizer: Any, size: int = DEFAULT_SIZE) -> list[str]:
    """The candidate words, deterministic and sorted."""
    return sorted(set(vocabulary_words(tokenizer)) | set(frequent_words(size)))


def lexicon_size() -> int:
    """Frequent English words added to the vocabulary: `ERASURE_LEXICON_SIZE` (0 = the vocabulary only)."""
    raw = os.environ.get("ERASURE_LEXICON_SIZE", "").strip()
    return max(0, int(raw)) if raw.isdigit() else DEFAULT_SIZE


def _cache_dir(root: Path | None = None) -> Path:
    """Where the lexicon caches live: `root` (the loaded model's cache folder, `ERASURE_CACHE_DIR` in the service's
    settings) or, without one, `paths.default_cache_dir`."""
    return Path(root) if root is not None else default_cache_dir()


@dataclass
class ReadingIndex:
    """Candidate words, where the model's text input layer places them, and where the text encoder alone places them
    ([N, <= DIM] unit rows each, float16).

    The two rankings find different things, and expansion asks both: the model's reading finds what it draws like
    the concept (a triangle's "wedge" and "pyramid" rank 2-3 of 47,614), the encoder's own similarity finds the
    concept's kind (for "triangle": "circle", "square", "polygon"), whose members the model draws differently and an
    erasure must hold still. Neither is measured against a world's words: the demo worlds' other shapes are not among
    a triangle's 512 nearest readings, and they are among its 25 nearest encodings.
    """

    words: list[str]
    rows: torch.Tensor
    mean: torch.Tensor  # [DIM] the lexicon's mean reading, subtracted from every query
    semantic: torch.Tensor  # [N, <= DIM] centred, normalised encoder means (the text encoder's own similarity)
    semantic_mean: torch.Tensor

    def nearest(self, reading: torch.Tensor, k: int, exclude: Set[str] = frozenset()) -> list[str]:
        """The `k` words whose reading lies nearest `reading` ([DIM], uncentred) by cosine."""
        return _top(self.words, self.rows, reading - self.mean.float(), k, exclude)

    def similar(self, encoding: torch.Tensor, k: int, exclude: Set[str] = frozenset()) -> list[str]:
        """The `k` words the text encoder places nearest `encoding` (`semantic_of` a phrase's `encode_means`)."""
        return _top(self.words, self.semantic, encoding - self.semantic_mean.float(), k, exclude)


def _top(words: list[str], rows: torch.Tensor, query: torch.Tensor, k: int, exclude: Set[str]) -> list[str]:
    scores = (rows.float() @ F.normalize(query.float().unsqueeze(0), dim=1).T).squeeze(1)
    order = scores.argsort(descending=True).tolist()
    return [words[i] for i in order if words[i] not in exclude][:k]


def _token_space(family: Any) -> tuple[str, str]:
    """The family's per-token text space and the first layer that reads it."""
    space = family.text_spaces[0]
    return space.name, space.layers[0]


def _projection(width: int) -> torch.Tensor | None:
    """A seeded Gaussian projection to DIM dimensions for readings wider than DIM (None: kept as they are)."""
    if width <= DIM:
        return None
    g = torch.Generator().manual_seed(1234)
    return torch.randn(width, DIM, generator=g) / DIM**0.5


@torch.no_grad()
def encode_means(pipe: Any, family: Any, phrases: list[str]) -> torch.Tensor:
    """The text encoder's states of "a {phrase}" averaged over the first POSITIONS tokens: [N, encoder width].

    Averaging before the model's text layer equals averaging after it (the layer is linear), so this part, the
    expensive one, depends on the text encoder alone and is shared by every model that uses the same encoder (the two
    demo worlds; FLUX.1-dev and -schnell). Mean over positions: the transformer gives text tokens no position of its
    own (Flux's text ids are zero), so it reads a prompt as a set of states; a flattened reading would put
    "a pentagram" (five pieces) far from "a star" by its shifted padding alone.
    """
    space, _ = _token_space(family)
    out: list[torch.Tensor] = []
    # The pipeline warns about every prompt cut at POSITIONS tokens; cutting is the point here.
    pipeline_log = logging.getLogger(type(pipe).__module__)
    level = pipeline_log.level
    pipeline_log.setLevel(logging.ERROR)
    try:
        for start in range(0, len(phrases), BATCH):
            prompts = [f"a {p}" for p in phrases[start : start + BATCH]]
            if family.encode_tokens is not None:
                states = family.encode_tokens(pipe, prompts, POSITIONS)
            else:
                states = family.encode(pipe, prompts, max_sequence_length=POSITIONS)[space]
            out.append(states[:, :POSITIONS].float().mean(1))
            if len(phrases) > 20 * BATCH and (start // BATCH) % 20 == 19:
                logger.info("lexicon: %d of %d words encoded", start + BATCH, len(phrases))
    finally:
        pipeline_log.setLevel(level)
    return torch.cat(out) if out else torch.zeros(0, 0)


def _layer_weight(pipe: Any, family: Any) -> torch.Tensor:
    _, layer = _token_space(family)
    return pipe.transformer.get_submodule(layer).weight.detach().float().cpu()


def _readings(means: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Encoder means [N, d] through the model's text layer, projected to at most DIM (the bias is shared by every
    word: centring removes it)."""
    projection = _projection(weight.shape[0])
    out = []
    for start in range(0, len(means), 8 * BATCH):
        flat = means[start : start + 8 * BATCH].float() @ weight.T
        out.append(flat if projection is None else flat @ projection)
    return torch.cat(out) if out else torch.zeros(0, min(weight.shape[0], DIM))


def semantic_of(means: torch.Tensor) -> torch.Tensor:
    """`encode_means` rows [N, d] as the text encoder's own encoding [N, <= DIM] (T5-XXL's 4,096 projected to
    1,024), uncentred: comparable with `ReadingIndex.semantic`."""
    projection = _projection(means.shape[1])
    return means.float() if projection is None else means.float() @ projection


def read_means(pipe: Any, family: Any, means: torch.Tensor) -> torch.Tensor:
    """`encode_means` rows through the family's per-token text layer: readings [N, <= DIM] (uncentred)."""
    return _readings(means, _layer_weight(pipe, family))


@torch.no_grad()
def read(pipe: Any, family: Any, phrases: list[str]) -> torch.Tensor:
    """Readings [N, <= DIM] of "a {phrase}" through the family's per-token text layer (uncentred)."""
    return read_means(pipe, family, encode_means(pipe, family, phrases))


def encoder_key(pipe: Any) -> str:
    """A digest of the text encoders that produce the token states: class, configuration and a strided sample of
    each input-embedding table (hashing all of T5-XXL for a cache key would cost more than it saves)."""
    digest = hashlib.sha256()
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, name, None)
        if encoder is None:
            continue
        digest.update(f"{name}:{type(encoder).__name__}:{encoder.config.to_json_string()}".encode())
        table = encoder.get_input_embeddings().weight.detach()
        digest.update(table[:: max(1, table.shape[0] // 512)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _digest(words: list[str]) -> str:
    return hashlib.sha256("\n".join(words).encode()).hexdigest()[:16]


def encoded_lexicon(pipe: Any, family: Any, words: list[str], cache_dir: Path | None = None) -> torch.Tensor:
    """`encode_means` of every word, cached on disk (under `cache_dir`, see `_cache_dir`) per text encoder and word
    list."""
    path = _cache_dir(cache_dir) / "lexicon" / f"encoded-{encoder_key(pipe)}-{_digest(words)}-{POSITIONS}.safetensors"
    cached = _load(path, "means", len(words))
    if cached is not None:
        return cached["means"]
    started = time.perf_counter()
    means = encode_means(pipe, family, words).half()
    _save_atomic(path, {"means": means.contiguous()})
    logger.info("lexicon of %d words encoded in %.1f s (%s)", len(words), time.perf_counter() - started, path)
    return means


def _load(path: Path, key: str, rows: int) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        if tensors[key].shape[0] == rows:
            return tensors
    except (OSError, KeyError, RuntimeError, SafetensorError) as e:  # a damaged cache is rebuilt, never trusted
        logger.warning("ignoring unreadable lexicon cache %s: %s", path, e)
    return None


def build_index(
    pipe: Any,
    family: Any,
    layer_hash: str,
    size: int = DEFAULT_SIZE,
    words: list[str] | None = None,
    cache_dir: Path | None = None,
) -> ReadingIndex:
    """The model's reading index of `words` (default: the lexicon of `size`), from the disk cache under `cache_dir`
    (see `_cache_dir`) when this model's text layer and the words match (the semantic rows come from the encoder's
    cached means: a matrix product)."""
    if words is None:
        words = lexicon(pipe.tokenizer_2 if hasattr(pipe, "tokenizer_2") else pipe.tokenizer, size)
    means = encoded_lexicon(pipe, family, words, cache_dir)
    encoded = semantic_of(means)
    semantic_mean = encoded.mean(0)
    semantic = F.normalize(encoded - semantic_mean, dim=1).half()
    path = _cache_dir(cache_dir) / "lexicon" / f"index-{layer_hash[:16]}-{_digest(words)}-{POSITIONS}-{DIM}.safetensors"
    cached = _load(path, "rows", len(words))
    if cached is not None:
        return ReadingIndex(words, cached["rows"], cached["mean"], semantic, semantic_mean)
    readings = _readings(means, _layer_weight(pipe, family))
    mean = readings.mean(0)
    rows = F.normalize(readings - mean, dim=1).half()
    _save_atomic(path, {"rows": rows.contiguous(), "mean": mean.contiguous()})
    return ReadingIndex(words, rows, mean, semantic, semantic_mean)


def _save_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache costs a rebuild next time, nothing else
        logger.warning("could not cache the lexicon index at %s: %s", path, e)
