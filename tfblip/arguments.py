"""Checks of user arguments shared by the retrieval and scoring helpers."""

from collections.abc import Sequence

import numpy as np


def positive_int(name, value):
    """`value` as an int, or a ValueError naming `name`; bools are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def text_list(texts, name="texts"):
    """A str or a non-empty sequence of str as a list, or a TypeError naming `name`."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, Sequence) and texts and all(isinstance(t, str) for t in texts):
        return list(texts)
    raise TypeError(f"{name} must be a str or a non-empty list of str, got {texts!r:.80}.")
