"""Text generation as transformers' generate(): greedy search, sampling, beam search.

The package knows no BLIP class: it decodes through a decoder step (next-token logits and a
key/value cache; see `decoding`), such as `tfblip.modeling.decoder_step.DecoderStep`.
"""

from tfblip.generation.options import GENERATION_CONFIG_NAME, read_generation_config

__all__ = ["GENERATION_CONFIG_NAME", "read_generation_config"]
