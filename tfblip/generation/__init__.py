"""Text generation as transformers' generate(): greedy search, sampling, beam search.

It knows no BLIP class: it decodes through a decoder step (see `decoding`)."""

from tfblip.generation.options import GENERATION_CONFIG_NAME, read_generation_config

__all__ = ["GENERATION_CONFIG_NAME", "read_generation_config"]
