"""The PyTorch reference: tiny transformers BLIP models with random weights, built at test time."""

import numpy as np
import torch

TEXT_CONFIG = {
    "vocab_size": 99,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 64,
    "bos_token_id": 97,
    "sep_token_id": 98,
    "pad_token_id": 0,
    "eos_token_id": 2,
}
# A vision width different from the text width catches cross-attention shape mistakes.
VISION_CONFIG = {
    "hidden_size": 24,
    "intermediate_size": 41,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 30,
    "patch_size": 6,
}
IMAGE_SIZE = 30


def tiny_config_kwargs(text=None, vision=None, **top):
    return {
        "text_config": {**TEXT_CONFIG, **(text or {})},
        "vision_config": {**VISION_CONFIG, **(vision or {})},
        "projection_dim": 16,
        "image_text_hidden_size": 12,
        **top,
    }


def randomize(model, seed, std=0.2):
    """Re-draws every parameter: BLIP's own vision init (std 1e-10) would hide layout errors."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


def reference_model(class_name, seed=0, **config_kwargs):
    """A transformers BLIP model in eval mode with seeded random weights."""
    import transformers

    config = transformers.BlipConfig(**tiny_config_kwargs(**config_kwargs))
    torch.manual_seed(seed)
    model = getattr(transformers, class_name)(config)
    return randomize(model, seed).eval()


def reference_text_model(class_name, seed=0, **text_kwargs):
    import transformers

    config = transformers.BlipTextConfig(
        **{**TEXT_CONFIG, "encoder_hidden_size": 24, **text_kwargs}
    )
    torch.manual_seed(seed)
    if class_name == "BlipTextModel":
        model = transformers.BlipTextModel(config)
    else:
        model = getattr(transformers, class_name)(config)
    return randomize(model, seed).eval()


def reference_vision_model(seed=0, **vision_kwargs):
    import transformers

    config = transformers.BlipVisionConfig(**{**VISION_CONFIG, **vision_kwargs})
    torch.manual_seed(seed)
    return randomize(transformers.BlipVisionModel(config), seed).eval()


def pixel_values(batch_size=2, size=IMAGE_SIZE, seed=0):
    return np.random.default_rng(seed).normal(size=(batch_size, 3, size, size)).astype(np.float32)


def text_inputs(batch_size=2, length=7, seed=0, vocab_size=TEXT_CONFIG["vocab_size"]):
    """Token ids and an attention mask whose later rows end in padding."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(3, vocab_size - 2, size=(batch_size, length)).astype(np.int64)
    attention_mask = np.ones((batch_size, length), dtype=np.int64)
    for row in range(1, batch_size):
        pad = min(row * 2, length - 2)
        attention_mask[row, length - pad :] = 0
        input_ids[row, length - pad :] = 0
    return input_ids, attention_mask


def to_torch(array):
    return torch.from_numpy(np.asarray(array))


def assert_close(actual, expected, atol=1e-4, name="value"):
    actual = np.asarray(actual, dtype=np.float64)
    expected = expected.detach().numpy() if hasattr(expected, "detach") else np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    diff = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    assert diff <= atol, f"{name}: max abs diff {diff:.3g} > {atol}"


def randomize_keras(model, seed):
    """A tfblip model with std-0.2 weights (LayerNorm scales around 1), so that its outputs
    vary from input to input, as `randomize` does for the PyTorch reference."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        values = rng.normal(0.0, 0.2, variable.shape)
        if variable.path.endswith("gamma"):
            values += 1.0
        variable.assign(values.astype(variable.dtype))
    return model


def tiny_processor_config(vocab, vision_hidden_size=32):
    """A tiny BlipConfig whose text side matches a `test_processing._build_vocab` vocabulary
    ([DEC] and [ENC] added after it; BERT's [SEP] 102). The default vision width equals the
    text width, as the VQA answer decoder needs."""
    import tfblip

    text = {"vocab_size": len(vocab) + 2, "bos_token_id": len(vocab), "sep_token_id": 102}
    vision = {"hidden_size": vision_hidden_size}
    return tfblip.BlipConfig(**tiny_config_kwargs(text=text, vision=vision))


def reference_vqa_decoder_logits(reference, pixels, input_ids, answers, answer_mask):
    """transformers' VQA answer logits for decoder inputs, computed module by module (its
    forward needs labels)."""
    with torch.no_grad():
        image_states = reference.vision_model(pixel_values=to_torch(pixels)).last_hidden_state
        question = reference.text_encoder(
            input_ids=to_torch(input_ids), encoder_hidden_states=image_states
        ).last_hidden_state
        return reference.text_decoder(
            input_ids=to_torch(answers),
            attention_mask=to_torch(answer_mask),
            encoder_hidden_states=question,
        ).logits
