"""generate() options: transformers' names and defaults, merged, validated and frozen."""

import dataclasses
import json
import os

from tfblip.arguments import is_int, positive_int

GENERATION_CONFIG_NAME = "generation_config.json"

# Marks the options that change what one call returns, not the compiled decoding loop.
_PER_CALL = {"per_call": True}
# None means no limit of this kind (max_*, min_new_tokens) or no top-k filter.
_MAY_BE_UNSET = ("max_length", "max_new_tokens", "min_new_tokens", "top_k")


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """The options of one generate() call, with transformers' names, defaults and meaning.

    All but the per-call options shape the compiled decoding loop, so `graph_options()` keys
    the compiled functions: no list of keys to keep in step with the fields.

    Raises:
        ValueError: an invalid value or a contradictory combination.
    """

    max_length: int | None = None
    max_new_tokens: int | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    do_sample: bool = False
    num_beams: int = 1
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    output_scores: bool = False
    jit_compile: bool = False
    return_dict_in_generate: bool = dataclasses.field(default=False, metadata=_PER_CALL)
    seed: int | None = dataclasses.field(default=None, metadata=_PER_CALL)

    @classmethod
    def names(cls):
        """The option names, sorted."""
        return sorted(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_dicts(cls, defaults, call_options):
        """transformers' defaults < `defaults` (generation_config.json) < `call_options`.

        Args:
            defaults: the model's decoding defaults, option names to values.
            call_options: the options of one call.

        Returns:
            The merged, validated GenerationOptions.

        Raises:
            TypeError: an unknown option name; the message lists the supported ones.
            ValueError: an invalid value or a contradictory combination.
        """
        unknown = sorted((set(defaults) | set(call_options)) - set(cls.names()))
        if unknown:
            raise TypeError(f"Unknown generate() option(s) {unknown}; supported: {cls.names()}.")
        return cls(**{**defaults, **call_options})

    def graph_options(self):
        """These options with the per-call ones at their defaults: the compiled loop's key."""
        per_call = [field for field in dataclasses.fields(self) if field.metadata.get("per_call")]
        return dataclasses.replace(self, **{field.name: field.default for field in per_call})

    def __post_init__(self):
        unset = {name for name in _MAY_BE_UNSET if getattr(self, name) is None}
        for name in ("max_length", "max_new_tokens", "num_beams", "num_return_sequences"):
            if name not in unset:  # kept as a plain int (numpy ints pass), JSON-writable
                object.__setattr__(self, name, positive_int(name, getattr(self, name)))
        for name in ("min_length", "no_repeat_ngram_size", "min_new_tokens", "top_k"):
            value = getattr(self, name)
            if name not in unset:
                if not is_int(value) or value < 0:
                    raise ValueError(f"{name} must be a non-negative int, got {value!r}.")
                object.__setattr__(self, name, int(value))
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}.")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}.")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(
                f"early_stopping must be True, False or 'never', got {self.early_stopping!r}."
            )
        if self.do_sample and self.num_beams > 1:
            raise ValueError("Beam sampling (do_sample=True with num_beams > 1) is not supported.")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams "
                f"({self.num_beams})."
            )
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise ValueError(
                "Greedy decoding returns one sequence per input; num_return_sequences > 1 needs "
                "do_sample=True or num_beams >= num_return_sequences."
            )
        if self.seed is not None:
            if not is_int(self.seed):
                raise ValueError(f"seed must be an int, got {self.seed!r}.")
            object.__setattr__(self, "seed", int(self.seed))


def read_generation_config(directory):
    """The generate() options of a checkpoint's generation_config.json ({} without one).

    Keys that describe the model (eos_token_id, pad_token_id, ...) are left out: BLIP's own
    config decides them (generation stops on sep_token_id, as in transformers).

    Raises:
        ValueError: the file is not valid JSON.
    """
    path = os.path.join(directory, GENERATION_CONFIG_NAME)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except ValueError as error:
        raise ValueError(f"Cannot read {path}: {error}") from error
    return {key: value for key, value in data.items() if key in GenerationOptions.names()}
