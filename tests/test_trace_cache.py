"""The trace cache (tfblip.ops.trace_cache): graphs traced in one process, imported in the next.

A fresh model of a cached configuration must decode without tracing, token for token as
transformers does, also with other weights than the ones it was traced with; anything that
changes the graph must change the cache key; an unreadable file is traced anew.
"""

import logging
import os

import numpy as np
import pytest
import torch
from reference import pixel_values, reference_model, to_torch

import tfblip
from tfblip.modeling.decoder_step import DecoderStep
from tfblip.ops import trace_cache


@pytest.fixture
def cache(tmp_path, monkeypatch):
    directory = tmp_path / "traces"
    monkeypatch.setenv(trace_cache.CACHE_ENVIRONMENT_VARIABLE, str(directory))
    return directory


@pytest.fixture
def count_traces(monkeypatch):
    """How many times the decoding loop was traced (DecoderStep.bind runs once per trace)."""
    traces = []
    bind = DecoderStep.bind
    monkeypatch.setattr(DecoderStep, "bind", lambda *a: traces.append(1) or bind(*a))
    return traces


def checkpoint(directory, seed, **config_changes):
    """A tiny random captioning checkpoint saved by transformers, and the reference model."""
    reference = reference_model("BlipForConditionalGeneration", seed=seed, **config_changes)
    reference.save_pretrained(directory)
    return reference


def torch_caption(reference, pixels):
    with torch.no_grad():
        return reference.generate(pixel_values=to_torch(pixels), max_new_tokens=6).numpy()


def caption(directory, pixels):
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(directory)
    return np.asarray(model.generate(pixels, max_new_tokens=6))


def test_a_fresh_model_decodes_from_the_cache_without_tracing(cache, count_traces, tmp_path):
    reference = checkpoint(tmp_path / "a", seed=1)
    pixels = pixel_values(batch_size=2, seed=1)
    expected = torch_caption(reference, pixels)
    assert np.array_equal(caption(tmp_path / "a", pixels), expected)
    assert len(count_traces) == 1
    files = sorted(os.listdir(cache))
    assert len(files) == 2  # the image encoder and the decoding loop
    # Another model of the same checkpoint imports both graphs: no tracing, same tokens.
    assert np.array_equal(caption(tmp_path / "a", pixels), expected)
    assert len(count_traces) == 1 and sorted(os.listdir(cache)) == files


def test_cached_graphs_read_the_weights_of_the_model_at_hand(cache, count_traces, tmp_path):
    # The graph holds no weights: a checkpoint with other weights (same architecture) gets
    # its own captions from the graphs another one traced.
    first, second = checkpoint(tmp_path / "a", seed=1), checkpoint(tmp_path / "b", seed=2)
    pixels = pixel_values(batch_size=2, seed=3)
    assert np.array_equal(caption(tmp_path / "a", pixels), torch_caption(first, pixels))
    expected = torch_caption(second, pixels)
    assert not np.array_equal(expected, torch_caption(first, pixels))
    assert np.array_equal(caption(tmp_path / "b", pixels), expected)
    assert len(count_traces) == 1


def test_a_changed_architecture_or_option_gets_its_own_graph(cache, count_traces, tmp_path):
    checkpoint(tmp_path / "a", seed=1)
    checkpoint(tmp_path / "b", seed=1, text={"num_hidden_layers": 1})
    pixels = pixel_values(batch_size=1, seed=1)
    caption(tmp_path / "a", pixels)
    caption(tmp_path / "b", pixels)
    assert len(count_traces) == 2 and len(os.listdir(cache)) == 4
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(tmp_path / "a")
    model.generate(pixels, max_new_tokens=6, num_beams=2)
    assert len(count_traces) == 3 and len(os.listdir(cache)) == 5


def test_an_unreadable_file_is_traced_again(cache, count_traces, tmp_path, caplog):
    reference = checkpoint(tmp_path / "a", seed=1)
    pixels = pixel_values(batch_size=1, seed=1)
    caption(tmp_path / "a", pixels)
    for name in os.listdir(cache):
        (cache / name).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a graph at all")
    with caplog.at_level(logging.WARNING, logger=trace_cache.__name__):
        assert np.array_equal(caption(tmp_path / "a", pixels), torch_caption(reference, pixels))
    assert "unreadable traced graph" in caplog.text
    assert len(count_traces) == 2
    # Rewritten: the next model reads it again.
    caption(tmp_path / "a", pixels)
    assert len(count_traces) == 2


def test_the_cache_can_be_turned_off(monkeypatch, count_traces, tmp_path):
    monkeypatch.setenv(trace_cache.CACHE_ENVIRONMENT_VARIABLE, "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    checkpoint(tmp_path / "a", seed=1)
    pixels = pixel_values(batch_size=1, seed=1)
    caption(tmp_path / "a", pixels)
    caption(tmp_path / "a", pixels)
    assert len(count_traces) == 2
    assert not (tmp_path / "xdg").exists()


def test_default_directory_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(trace_cache.CACHE_ENVIRONMENT_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert trace_cache.cache_directory() == os.path.join(tmp_path, "tfblip", "traces")
