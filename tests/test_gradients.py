"""Fine-tuning parity with transformers' PyTorch BLIP: loss, gradients and one AdamW step.

From the same weights and batch, captioning and VQA give the same training loss, the same
gradient for every weight, and the same weights after one AdamW step (max abs diff <= 1e-5).
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
from reference import pixel_values, reference_model, text_inputs, to_torch

import tfblip
from tfblip.checkpoints import pytorch_named_variables, pytorch_state_dict
from tfblip.checkpoints.names import TO_PYTORCH_AXES

# At step 1 Adam moves every weight whose gradient is well above epsilon by ~lr (m_hat /
# sqrt(v_hat) = sign(g)), so lr must be far above the 1e-5 tolerance for the comparison to
# mean anything: 1e-3 turns a wrong sign or a missed update into a 1e-3 error.
LR = 1e-3
# Large enough that decay alone (lr * wd * |w| ~ 2e-5) exceeds the tolerance: a side that
# skipped or doubled the decay fails.
WEIGHT_DECAY = 0.1
BETA_1, BETA_2 = 0.9, 0.999
# Step 1 divides by sqrt(v_hat) + eps = |g| + eps, which flips between +-lr for gradients
# below eps. Some gradients here are float32 noise around an exact zero (attention key
# biases: softmax ignores a per-query shift) or near-degenerate (~1e-9), and would move
# by an arbitrary +-lr on each side with PyTorch's default 1e-8. With 1e-6 the noise
# moves a weight by lr * noise / eps < 1e-6, and every other gradient (>= 1e-5) still
# takes a near-full step.
EPSILON = 1e-6
# torch: lr * m_hat / (sqrt(v) / sqrt(1 - b2^t) + eps). Keras: lr * sqrt(1 - b2^t) /
# (1 - b1^t) * m / (sqrt(v) + eps'), i.e. lr * m_hat / (sqrt(v_hat) + eps' / sqrt(1 -
# b2^t)). eps' = eps * sqrt(1 - b2) makes the two the same update at step 1 (at later
# steps Keras' effective epsilon would shrink towards eps').
KERAS_EPSILON = EPSILON * np.sqrt(1.0 - BETA_2)

WEIGHT_ATOL = 1e-5
# Gradients compared relative to each tensor's largest entry, plus a floor (~2e-8 of the
# largest gradient) for tensors that are float32 noise around zero (key biases, <= 4e-10).
GRAD_RTOL, GRAD_ATOL = 1e-5, 1e-8

# Training-mode forwards are deterministic only without dropout; the caption model trains
# with label smoothing, which both sides read from text_config.label_smoothing.
NO_DROPOUT_TEXT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
NO_DROPOUT_VISION = {"attention_dropout": 0.0}
BOS = 97


def captioning_case():
    reference = reference_model(
        "BlipForConditionalGeneration",
        seed=40,
        text={**NO_DROPOUT_TEXT, "label_smoothing": 0.1},
        vision=NO_DROPOUT_VISION,
    )
    input_ids, attention_mask = text_inputs(batch_size=3, seed=40)  # captions of 7, 5, 3
    input_ids[:, 0] = BOS
    batch = {
        "pixel_values": pixel_values(batch_size=3, seed=40),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": np.where(attention_mask == 1, input_ids, -100),
    }
    return reference, tfblip.TFBlipForConditionalGeneration, batch


def vqa_case():
    # Equal widths: the answer decoder cross-attends to question states through weights
    # sized for image states.
    reference = reference_model(
        "BlipForQuestionAnswering",
        seed=41,
        text=NO_DROPOUT_TEXT,
        vision={**NO_DROPOUT_VISION, "hidden_size": 32},
    )
    # Unpadded questions: transformers 5 ignores the question mask in the answer decoder's
    # cross-attention, tfblip applies it (README, "Where tfblip differs").
    questions = np.random.default_rng(41).integers(3, BOS, size=(3, 6))
    # Repeated tokens: their lookups' gradient rows must be summed before Adam squares them.
    assert len(np.unique(questions)) < questions.size
    # Padded answers as transformers trains them: pad ids in the labels, counted by the loss
    # (it cannot embed -100).
    answers, answer_mask = text_inputs(batch_size=3, length=5, seed=42)
    answers[:, 0] = BOS
    batch = {
        "pixel_values": pixel_values(batch_size=3, seed=41),
        "input_ids": questions,
        "attention_mask": np.ones_like(questions),
        "labels": answers,
        "decoder_attention_mask": answer_mask,
    }
    return reference, tfblip.TFBlipForQuestionAnswering, batch


@dataclasses.dataclass
class Step:
    """Both sides of one AdamW step, every tensor under its PyTorch name and layout."""

    torch_loss: float
    keras_loss: float
    before: dict
    torch_grads: dict  # None where PyTorch gave the parameter no gradient
    keras_grads: dict
    torch_after: dict
    keras_after: dict


def torch_step(reference, batch):
    reference.train()
    before = {name: p.detach().numpy().copy() for name, p in reference.named_parameters()}
    loss = reference(**{key: to_torch(value) for key, value in batch.items()}).loss
    loss.backward()
    grads = {
        name: None if p.grad is None else p.grad.numpy().copy()
        for name, p in reference.named_parameters()
    }
    torch.optim.AdamW(
        reference.parameters(),
        lr=LR,
        betas=(BETA_1, BETA_2),
        eps=EPSILON,
        weight_decay=WEIGHT_DECAY,
    ).step()
    after = {name: p.detach().numpy().copy() for name, p in reference.named_parameters()}
    return float(loss.detach()), before, grads, after


def keras_step(model, batch):
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss = model(**batch, training=True).loss
    gradients = tape.gradient(loss, variables)
    by_variable = {id(v): g for v, g in zip(variables, gradients)}
    grads = {}
    for name, (variable, layout) in pytorch_named_variables(model).items():
        gradient = by_variable.get(id(variable))
        if gradient is not None:
            gradient = tf.convert_to_tensor(gradient).numpy()  # embeddings give IndexedSlices
            axes = TO_PYTORCH_AXES[layout]
            gradient = np.transpose(gradient, axes) if axes else gradient
        grads[name] = gradient
    # Keras, like torch.optim.AdamW here, decays every variable it updates.
    keras.optimizers.AdamW(
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        beta_1=BETA_1,
        beta_2=BETA_2,
        epsilon=KERAS_EPSILON,
    ).apply_gradients(zip(gradients, variables))
    return float(loss), grads, pytorch_state_dict(model)


@pytest.fixture(scope="module", params=["captioning", "vqa"])
def step(request, tmp_path_factory):
    reference, tf_class, batch = {"captioning": captioning_case, "vqa": vqa_case}[request.param]()
    directory = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(directory)
    model = tf_class.from_pretrained(directory)
    # The decoder's LM head is tied to its word embeddings on both sides: PyTorch lists the
    # shared tensor once, and its gradient must sum the lookup and the projection.
    decoder = reference.text_decoder
    assert decoder.cls.predictions.decoder.weight is decoder.bert.embeddings.word_embeddings.weight
    torch_loss, before, torch_grads, torch_after = torch_step(reference, batch)
    keras_loss, keras_grads, keras_after = keras_step(model, batch)
    assert set(keras_after) == set(torch_after), "PyTorch and Keras parameter sets differ"
    return Step(torch_loss, keras_loss, before, torch_grads, keras_grads, torch_after, keras_after)


def test_training_loss_matches(step):
    assert np.isfinite(step.torch_loss)
    assert abs(step.keras_loss - step.torch_loss) <= 1e-6 * max(1.0, abs(step.torch_loss))


def test_gradients_match(step):
    failures = []
    for name, expected in step.torch_grads.items():
        actual = step.keras_grads[name]
        if expected is None or actual is None:
            if (expected is None) != (actual is None):
                failures.append(
                    f"{name}: gradient only on the {'Keras' if expected is None else 'PyTorch'} side"
                )
            continue
        scale = float(np.max(np.abs(expected)))
        diff = float(np.max(np.abs(actual - expected)))
        if diff > GRAD_RTOL * scale + GRAD_ATOL:
            failures.append(f"{name}: max abs diff {diff:.3g} (largest gradient {scale:.3g})")
    assert not failures, "\n".join(failures)


def test_adamw_step_matches_and_moves_every_weight(step):
    decay = 1.0 - LR * WEIGHT_DECAY
    failures = []
    for name, expected in step.torch_after.items():
        actual = step.keras_after[name]
        diff = float(np.max(np.abs(actual - expected)))
        if diff > WEIGHT_ATOL:
            failures.append(f"{name}: after the step, max abs diff {diff:.3g}")
        # A no-op step must fail: every tensor moves by more than the tolerance (decay alone
        # does), and one with a gradient above epsilon takes a near-full lr step somewhere.
        for side, after in (("PyTorch", expected), ("Keras", actual)):
            if np.max(np.abs(after - step.before[name])) <= WEIGHT_ATOL:
                failures.append(f"{name}: unchanged by the {side} step")
            grad = step.torch_grads[name]
            if grad is not None and np.max(np.abs(grad)) >= EPSILON:
                moved = np.max(np.abs(after - step.before[name] * decay))
                if moved < LR / 4:
                    failures.append(f"{name}: the {side} step ignored the gradient")
    assert not failures, "\n".join(failures)


def test_embedding_rows_without_gradient_only_decay(step):
    # Position rows past the longest sequence and vocabulary rows absent from the batch (the
    # question encoder has no LM head to reach them) get an exactly zero gradient on both
    # sides, so the step is the weight decay alone: Adam's moments of a zero gradient are
    # zero. (Isolated zeros elsewhere are float32 noise in attention key biases.)
    decay = 1.0 - LR * WEIGHT_DECAY
    checked = 0
    for name, grad in step.torch_grads.items():
        if not name.endswith("embeddings.weight"):
            continue
        unused = np.all(grad == 0, axis=1)
        checked += int(unused.sum())
        assert np.all(step.keras_grads[name][unused] == 0), name
        expected = step.before[name][unused] * decay
        for after in (step.torch_after[name], step.keras_after[name]):
            np.testing.assert_allclose(after[unused], expected, rtol=0, atol=1e-7, err_msg=name)
    assert checked > 0


def test_every_parameter_gets_a_gradient_on_both_sides(step):
    # A parameter without any gradient is skipped by both optimizers (no decay either), so a
    # None on one side only would show up as a decay-sized difference; name it instead.
    only_torch = [n for n, g in step.torch_grads.items() if g is None]
    only_keras = [n for n, g in step.keras_grads.items() if g is None]
    assert only_torch == only_keras == []


def test_pad_row_gradient_comes_from_the_lm_head_only(step):
    # nn.Embedding(padding_idx=pad) sends lookups of pad ids no gradient, so the tied pad row
    # learns only through the LM head's projection; a plain Keras Embedding would add the
    # gradient of every pad position (here the answers' padding, counted by VQA's loss).
    name = "text_decoder.bert.embeddings.word_embeddings.weight"
    pad = 0
    expected, actual = step.torch_grads[name][pad], step.keras_grads[name][pad]
    assert np.any(expected != 0)
    diff = float(np.max(np.abs(actual - expected)))
    assert diff <= GRAD_RTOL * float(np.max(np.abs(expected))) + GRAD_ATOL, diff


def test_mixed_bfloat16_training_steps(tmp_path):
    reference, _, batch = captioning_case()
    reference.save_pretrained(tmp_path)
    with torch.no_grad():
        float32_loss = float(reference(**{k: to_torch(v) for k, v in batch.items()}).loss)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tfblip.TFBlipForConditionalGeneration.from_pretrained(tmp_path)
        optimizer = keras.optimizers.AdamW(learning_rate=LR)
        losses = []
        for _ in range(4):
            with tf.GradientTape() as tape:
                outputs = model(**batch, training=True)
            gradients = tape.gradient(outputs.loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            losses.append(float(outputs.loss))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert keras.mixed_precision.global_policy().name == previous.name
    # bfloat16 matmuls, float32 weights, and a loss taken from float32 log-softmax.
    assert outputs.logits.dtype == tf.bfloat16
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    assert outputs.loss.dtype == tf.float32
    assert np.all(np.isfinite(losses)), losses
    assert np.all(np.diff(losses) < 0), losses
    assert abs(losses[0] - float32_loss) < 0.05 * float32_loss
