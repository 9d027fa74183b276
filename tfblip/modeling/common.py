"""Small building blocks shared by the vision and text towers."""

import keras
import tensorflow as tf


def exact_gelu(x):
    """GELU's erf form, evaluated in float32: TensorFlow's CPU Erfc on bfloat16 converts each
    element on its own and takes about 7x float32's time (a sixth of a bf16 caption's
    vision encoder)."""
    if x.dtype == tf.float32:
        return keras.activations.gelu(x, approximate=False)
    return tf.cast(keras.activations.gelu(tf.cast(x, tf.float32), approximate=False), x.dtype)


def get_activation(name):
    """Maps a transformers `hidden_act` name to a function."""
    activations = {
        # transformers' "gelu" is the exact erf form, Keras' default is the tanh approximation.
        "gelu": exact_gelu,
        "gelu_new": lambda x: keras.activations.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: keras.activations.gelu(x, approximate=True),
        "relu": keras.activations.relu,
        "tanh": keras.activations.tanh,
        "silu": keras.activations.silu,
        "swish": keras.activations.silu,
    }
    if name not in activations:
        raise ValueError(f"Unsupported hidden_act {name!r}; expected one of {sorted(activations)}.")
    return activations[name]


@keras.saving.register_keras_serializable(package="tfblip")
class Dense(keras.layers.Dense):
    """keras.layers.Dense computing the same numbers in fewer graph operations.

    Keras multiplies (B, T, D) inputs through a tensordot, about 25 operations when the
    sizes are unknown, as in a decoding loop's graph; this is one 2-D MatMul + BiasAdd (which
    Grappler fuses) between two reshapes. Tracing and optimizing a graph take time in
    proportion to its operations: the decoder runs 8 of these per layer.
    """

    def call(self, inputs, training=None):
        if self.activation is not keras.activations.linear or self.lora_enabled:
            return super().call(inputs, training=training)
        return self._matmul_and_bias(inputs, self.kernel)

    def quantize(self, mode=None, type_check=True, config=None):
        # Keras refuses subclasses, whose call it cannot vouch for; this one's int8 call
        # is below (tfblip.modeling.quantization says which weights are quantized, and how).
        super().quantize(mode, type_check=False, config=config)

    def _int8_call(self, inputs, training=None):
        # Weight-only int8 (no inputs quantizer): Keras' numbers, x @ kernel / scale + bias,
        # with the int8 kernel cast to the compute dtype in the graph.
        if self.inputs_quantizer is not None or self.lora_enabled:
            return super()._int8_call(inputs, training=training)
        kernel = tf.cast(self._kernel, self.compute_dtype)
        scale = tf.cast(self.kernel_scale, self.compute_dtype)
        outputs = self._matmul_and_bias(inputs, kernel, scale)
        return outputs if self.activation is None else self.activation(outputs)

    def _matmul_and_bias(self, inputs, kernel, scale=None):
        rows = tf.reshape(inputs, (-1, inputs.shape[-1])) if inputs.shape.rank != 2 else inputs
        outputs = tf.matmul(rows, kernel)
        if scale is not None:
            outputs = outputs / scale
        if self.bias is not None:
            outputs = tf.nn.bias_add(outputs, self.bias)
        if inputs.shape.rank == 2:
            return outputs
        leading = inputs.shape[:-1]
        if leading.is_fully_defined():
            return tf.reshape(outputs, (*leading, self.units))
        return tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], [self.units]], 0))


def dense(units, name, initializer_range, dtype, use_bias=True, input_size=None):
    """A Dense layer named after the PyTorch `nn.Linear` it mirrors.

    With `input_size`, `BuildsSublayers.build` creates its kernel.
    """
    layer = Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=initializer_range),
        name=name,
        dtype=dtype,
    )
    layer.build_shape = (None, input_size)
    return layer


def layer_norm(epsilon, name, dtype, size=None):
    """A LayerNormalization over `size` features (Keras keeps its statistics in float32)."""
    layer = keras.layers.LayerNormalization(epsilon=epsilon, name=name, dtype=dtype)
    layer.build_shape = (None, size)
    return layer


def masked_softmax(scores, keep_mask=None):
    """Softmax over the last axis, computed in float32 so bfloat16 scores stay stable.

    `keep_mask` is boolean (False = masked). Masked scores become the float32 minimum, as
    transformers' additive masks make them; a fully masked row turns uniform in both. The
    mask is boolean, not additive, because Keras would cast a float mask to bfloat16.
    """
    scores_f32 = tf.cast(scores, tf.float32)
    if keep_mask is not None:
        scores_f32 = tf.where(keep_mask, scores_f32, tf.float32.min)
    return tf.cast(tf.nn.softmax(scores_f32, axis=-1), scores.dtype)


def graph_description(layer, **details):
    """What a traced graph of `layer` depends on besides its variables: its class, config and
    dtype policy, and `details` (the trace cache's key, tfblip.ops.trace_cache)."""
    return {
        "layer": type(layer).__name__,
        "config": layer.config.to_dict(),
        "dtype_policy": layer.dtype_policy.name,
        **details,
    }


class ConfigSerializable:
    """Mixin for layers and models built from a config object (kept as `self.config`).

    `get_config` stores the config as a plain dict so `.keras` files hold JSON only.
    """

    config_class = None

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config

    def get_config(self):
        base = super().get_config()
        base["config"] = self.config.to_dict()
        return base

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["config"] = cls.config_class.from_dict(config["config"])
        return cls(**config)


class BuildsSublayers:
    """Mixin whose `build` builds every direct sublayer not built yet.

    Each gets the `build_shape` that `dense` / `layer_norm` gave it, or None (our own layers
    and Embedding know their sizes). Weights then exist right after construction, as the
    checkpoint loaders need, under the same variable paths as when built by a call.
    """

    def build(self, input_shape=None):
        for value in vars(self).values():
            for child in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(child, keras.layers.Layer) and not child.built:
                    child.build(getattr(child, "build_shape", None))


class TowerLayer(BuildsSublayers, ConfigSerializable, keras.layers.Layer):
    """A layer of a vision or text tower, built from the tower's config."""

    def make_dense(self, units, name, input_size=None):
        """A Dense sublayer over `input_size` features (default: hidden_size)."""
        input_size = input_size or self.config.hidden_size
        init = self.config.initializer_range
        return dense(units, name, init, self.dtype_policy, input_size=input_size)

    def make_layer_norm(self, name):
        config = self.config
        return layer_norm(config.layer_norm_eps, name, self.dtype_policy, config.hidden_size)


def stack(block, config, name, dtype):
    """`config.num_hidden_layers` blocks, named `<name>.<i>` as in a PyTorch ModuleList."""
    return [block(config, name=f"{name}.{i}", dtype=dtype) for i in range(config.num_hidden_layers)]


def run_layers(layers, hidden_states, layer_arguments):
    """Runs transformer blocks one after another.

    Each block returns (hidden_states, *outputs); `layer_arguments` holds one dict of keyword
    arguments per block. Returns (last hidden states, (input, each block's hidden states), a
    tuple across blocks per output, e.g. the attention probabilities).
    """
    all_hidden_states, outputs = [hidden_states], []
    for layer, arguments in zip(layers, layer_arguments, strict=True):
        hidden_states, *layer_outputs = layer(hidden_states, **arguments)
        all_hidden_states.append(hidden_states)
        outputs.append(layer_outputs)
    return hidden_states, tuple(all_hidden_states), tuple(zip(*outputs))
