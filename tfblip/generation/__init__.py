"""Text generation: greedy search, sampling and beam search, as transformers' generate().

The package knows no BLIP class: it decodes through a decoder step (next-token logits and a
key/value cache, `tfblip.modeling.decoder_step`). Modules, one concern each: `options` (the
validated options, generation_config.json), `prompts` (prompt layout), `processors` (logits
processors and sampling warpers), `greedy`, `sampling`, `beam` (the searches) and `decoding`
(the whole decoding and the eager `generate`).
"""

from tfblip.generation.decoding import GenerateOutput, decode, generate
from tfblip.generation.options import (
    GENERATION_CONFIG_NAME,
    GenerationOptions,
    read_generation_config,
)
from tfblip.generation.prompts import drop_last_token

__all__ = [
    "GENERATION_CONFIG_NAME",
    "GenerateOutput",
    "GenerationOptions",
    "decode",
    "drop_last_token",
    "generate",
    "read_generation_config",
]
