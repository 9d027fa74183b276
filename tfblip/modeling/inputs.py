"""Checks of the images and token ids a model is given, before TensorFlow sees them.

Each error names the input and the model limit it breaks; TensorFlow's own (a GatherV2 or
Conv2D failure deep in a trace) would name neither. Values known while tracing (every eager
call) give a ValueError, others an assertion the returned tensor depends on, whose
InvalidArgumentError says the same when the graph runs.
"""

import tensorflow as tf


def check_pixel_values(pixel_values, num_channels):
    """Rejects pixel_values that are not (B, num_channels, H, W) with a message naming the problem."""
    shape = pixel_values.shape
    if shape.rank is not None and shape.rank != 4:
        raise ValueError(
            f"pixel_values must have rank 4 (batch, channels, height, width), got shape {shape}."
        )
    if shape.rank == 4 and shape[1] is not None and shape[1] != num_channels:
        hint = (
            " (channels-last input? transpose to (B, C, H, W))" if shape[3] == num_channels else ""
        )
        raise ValueError(
            f"pixel_values must be channels-first with {num_channels} channels, got shape "
            f"{shape}{hint}."
        )


def check_image_size(pixel_values, config, interpolate_pos_encoding):
    """Images larger than the position grid need interpolated position embeddings."""
    height, width = pixel_values.shape[2], pixel_values.shape[3]
    if interpolate_pos_encoding or height is None or width is None:
        return
    patches = (height // config.patch_size_px) * (width // config.patch_size_px)
    if patches > config.num_patches:
        size = config.image_size_px
        raise ValueError(
            f"pixel_values of size {height}x{width} has more patches than the model's "
            f"{size}x{size} position embeddings; pass interpolate_pos_encoding=True."
        )


def check_token_ids(input_ids, name="input_ids"):
    """Rejects token ids that are not an integer (batch, sequence) tensor."""
    if input_ids.shape.rank is not None and input_ids.shape.rank != 2:
        raise ValueError(f"{name} must have shape (batch, sequence), got {input_ids.shape}.")
    if not input_ids.dtype.is_integer:
        raise ValueError(f"{name} must be integer token ids, got dtype {input_ids.dtype.name}.")


def _asserting(tensor, condition, message):
    """`tensor`, made to depend on a runtime assertion of `condition`."""
    with tf.control_dependencies([tf.debugging.Assert(condition, message)]):
        return tf.identity(tensor)


def checked_indices(indices, limit, name, table):
    """`indices`, checked to lie in [0, limit) before they index the embedding `table` (what
    its rows are, for the message)."""
    message = f"{name} must hold {table}, in [0, {limit})"
    values = tf.get_static_value(indices)
    if values is None:
        inside = tf.reduce_all((indices >= 0) & (indices < tf.cast(limit, indices.dtype)))
        bounds = [tf.reduce_min(indices), "to", tf.reduce_max(indices)]
        return _asserting(indices, inside, [f"{message}; got values from", *bounds])
    outside = values[(values < 0) | (values >= limit)]
    if outside.size:
        raise ValueError(
            f"{message}; got {int(outside.flat[0])}. Were the ids made for another "
            "checkpoint (a different tokenizer or config)?"
        )
    return indices


def checked_token_ids(input_ids, config, name="input_ids"):
    """`checked_indices` for token ids of the model with text config `config`."""
    table = f"token ids of the vocabulary (vocab_size {config.vocab_size})"
    return checked_indices(input_ids, config.vocab_size, name, table)


def checked_length(inputs, past_length, max_positions, name):
    """`inputs` (B, T, ...), checked to fit the position table after `past_length` cached
    positions."""
    new_length, past = inputs.shape[1], tf.get_static_value(past_length)
    if new_length is None or past is None:
        total = tf.cast(past_length, tf.int32) + tf.shape(inputs)[1]
        message = (
            # No apostrophes: the assertion's message would show them escaped.
            f"{name}, with the cached tokens, must fit the {max_positions} position embeddings "
            "of the model (max_position_embeddings); truncate the text. Total length:"
        )
        return _asserting(inputs, total <= max_positions, [message, total])
    if int(past) + new_length > max_positions:
        cached = f" after {int(past)} cached tokens" if past else ""
        raise ValueError(
            f"{name} is {new_length} tokens long{cached}, but the model has "
            f"{max_positions} position embeddings (max_position_embeddings): truncate "
            f"the text to at most {max_positions - int(past)} tokens, e.g. with "
            f"processor(text=..., truncation=True, max_length={max_positions})."
        )
    return inputs


def checked_text_inputs(config, input_ids, inputs_embeds, position_ids, past_length, check_ranges):
    """(input_ids, inputs_embeds, position_ids) for a text model of config `config`: exactly
    one of the first two, integer (B, T) ids and, with `check_ranges`, ids in the vocabulary
    and positions in the position table after `past_length` cached ones."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Specify exactly one of input_ids and inputs_embeds.")
    if input_ids is not None:
        input_ids = tf.convert_to_tensor(input_ids)
        check_token_ids(input_ids)
    if not check_ranges:
        return input_ids, inputs_embeds, position_ids
    limit = config.max_position_embeddings
    if input_ids is not None:
        input_ids = checked_token_ids(input_ids, config)
    if position_ids is not None:
        table = f"positions of the position embeddings (max_position_embeddings {limit})"
        position_ids = tf.convert_to_tensor(position_ids)
        position_ids = checked_indices(position_ids, limit, "position_ids", table)
    elif input_ids is not None:
        input_ids = checked_length(input_ids, past_length, limit, "input_ids")
    else:
        inputs_embeds = tf.convert_to_tensor(inputs_embeds)
        inputs_embeds = checked_length(inputs_embeds, past_length, limit, "inputs_embeds")
    return input_ids, inputs_embeds, position_ids
