"""tfblip.arguments: the argument checks shared by configuration, image processing, data,
retrieval, scoring and generation."""

import numpy as np
import pytest

import tfblip
from tfblip.arguments import is_int, is_number, is_positive_int, positive_int, text_list


def test_ints_are_python_or_numpy_ints_but_not_bools():
    for value in (0, -3, 7, np.int64(2), np.uint8(1)):
        assert is_int(value) and is_number(value)
    for value in (True, np.bool_(False), 2.0, "2", None, np.float32(1)):
        assert not is_int(value)
    assert is_number(2.5) and is_number(np.float32(1)) and not is_number(True)
    assert [is_positive_int(v) for v in (1, np.int32(4), 0, -1, 1.0, True)] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]


def test_positive_int_returns_a_python_int_and_names_the_argument():
    assert positive_int("batch_size", np.int64(3)) == 3
    assert type(positive_int("batch_size", np.int64(3))) is int
    for value in (0, -1, 2.0, True, "4", None):
        with pytest.raises(ValueError, match=r"^num_beams must be a positive int, got "):
            positive_int("num_beams", value)


def test_text_list_names_the_argument():
    assert text_list("a cat") == ["a cat"]
    assert text_list(("a", "b")) == ["a", "b"]
    for value in ([], ["a", 1], None, b"bytes"):
        with pytest.raises(TypeError, match="questions must be a str or a non-empty list"):
            text_list(value, "questions")


def test_users_share_the_checks():
    # The configuration, image processor and data pipeline name the argument as they did.
    with pytest.raises(ValueError, match="BlipVisionConfig.hidden_size must be a positive int"):
        tfblip.BlipVisionConfig(hidden_size=True)
    config = tfblip.BlipVisionConfig(hidden_size=np.int64(48), num_attention_heads=4)
    assert type(config.hidden_size) is int and config.to_dict()["hidden_size"] == 48
    with pytest.raises(ValueError, match="size height and width must be positive ints"):
        tfblip.BlipImageProcessor(size=(0, 4))
    assert tfblip.BlipImageProcessor(size=np.int64(8)).size == {"height": 8, "width": 8}
