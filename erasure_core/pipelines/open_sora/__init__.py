"""Open-Sora 2.0 as diffusers components: `OpenSoraTransformer3DModel`, `OpenSoraPipeline` and the converters.

Importing this package is what lets `OpenSoraPipeline.from_pretrained(folder)` resolve the transformer class that
`model_index.json` names under its module path.
"""

from erasure_core.pipelines.open_sora.convert_open_sora import (
    convert_open_sora_checkpoint,
    convert_open_sora_lora,
    load_open_sora_transformer,
)
from erasure_core.pipelines.open_sora.pipeline_open_sora import (
    OpenSoraPipeline,
    OpenSoraPipelineOutput,
    decorate_prompt,
    shift_alpha,
)
from erasure_core.pipelines.open_sora.transformer_open_sora import (
    OpenSoraAttnProcessor,
    OpenSoraPosEmbed,
    OpenSoraTransformer3DModel,
)

__all__ = [
    "OpenSoraAttnProcessor",
    "OpenSoraPipeline",
    "OpenSoraPipelineOutput",
    "OpenSoraPosEmbed",
    "OpenSoraTransformer3DModel",
    "convert_open_sora_checkpoint",
    "convert_open_sora_lora",
    "decorate_prompt",
    "load_open_sora_transformer",
    "shift_alpha",
]
