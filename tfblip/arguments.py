"""Checks of user arguments, shared by the configuration, image processing, data, retrieval,
scoring and generation code. Each error names the argument it is about."""

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["is_int", "is_number", "is_positive_int", "positive_int", "text_list"]


def is_int(value: Any) -> bool:
    """Whether `value` is an int (Python or NumPy); bools are not.

    Args:
        value: anything.

    Returns:
        True for ints and NumPy integers, False for everything else, bools included.
    """
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
    """Whether `value` is an int or a float (Python or NumPy); bools are not.

    Args:
        value: anything.

    Returns:
        True for ints, floats and their NumPy kinds, False for everything else, bools
        included.
    """
    return is_int(value) or isinstance(value, (float, np.floating))


def is_positive_int(value: Any) -> bool:
    """Whether `value` is an int (see :func:`is_int`) of at least 1.

    Args:
        value: anything.

    Returns:
        True for ints and NumPy integers >= 1, False for everything else.
    """
    return is_int(value) and value >= 1


def positive_int(name: str, value: Any) -> int:
    """`value` as a Python int, checked to be a positive int.

    Args:
        name: the argument's name, for the error message.
        value: the argument's value; an int or NumPy integer >= 1 (bools are refused).

    Returns:
        int(value).

    Raises:
        ValueError: `value` is not a positive int; the message names `name`.
    """
    if not is_positive_int(value):
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def text_list(texts: Any, name: str = "texts") -> list[str]:
    """A str or a non-empty sequence of str, as a list.

    Args:
        texts: one text, or a non-empty sequence of texts.
        name: the argument's name, for the error message.

    Returns:
        The texts as a new list.

    Raises:
        TypeError: `texts` is neither; the message names `name`.
    """
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, Sequence) and texts and all(isinstance(t, str) for t in texts):
        return list(texts)
    raise TypeError(f"{name} must be a str or a non-empty list of str, got {texts!r:.80}.")
