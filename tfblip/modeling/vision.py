"""BLIP vision tower: a pre-LayerNorm ViT.

Every sublayer's Keras `name` is the attribute name of the PyTorch module it mirrors, so a
PyTorch weight key maps to a Keras variable by walking layer names (see
`tfblip.checkpoints.names`).
"""

import keras
import tensorflow as tf

from tfblip.configuration import BlipVisionConfig
from tfblip.modeling.attention import MultiHeadAttention
from tfblip.modeling.common import (
    BuildsSublayers,
    ConfigSerializable,
    TowerLayer,
    get_activation,
    layer_norm,
    run_layers,
    stack,
)
from tfblip.modeling.inputs import check_image_size, check_pixel_values
from tfblip.modeling.pretrained import PretrainedMixin
from tfblip.modeling.quantization import QuantizeMixin
from tfblip.outputs import BaseModelOutputWithPooling


def bicubic_resize_matrix(out_size, in_size):
    """(out_size, in_size) matrix M with `M @ x` = torch bicubic resize of x, align_corners=False.

    PyTorch's cubic kernel has a = -0.75 (tf.image.resize's -0.5, so it cannot be reused).
    `out_size` may be a tensor (dynamic image sizes); `in_size` is a Python int.
    """
    a = -0.75
    out_size_f = tf.cast(out_size, tf.float32)
    src = (tf.range(out_size_f) + 0.5) * (tf.cast(in_size, tf.float32) / out_size_f) - 0.5
    floor = tf.floor(src)
    t = src - floor
    matrix = 0.0
    for offset in range(-1, 3):
        x = tf.abs(t - offset)  # the tap's distance from src: under 1 for the middle two
        if offset in (0, 1):
            weight = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        else:
            weight = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
        # Taps outside the grid repeat the border value, as PyTorch does.
        index = tf.clip_by_value(tf.cast(floor, tf.int32) + offset, 0, in_size - 1)
        matrix += tf.one_hot(index, in_size, dtype=tf.float32) * weight[:, None]
    return matrix


class BlipVisionEmbeddings(TowerLayer):
    """Conv patch embedding, a prepended class token and learned position embeddings."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.embed_dim = config.hidden_size
        self.grid_size = config.num_patches_per_side
        self.patch_embedding = keras.layers.Conv2D(
            self.embed_dim,
            kernel_size=config.patch_size_px,
            strides=config.patch_size_px,
            padding="valid",
            data_format="channels_last",
            name="patch_embedding",
            dtype=self.dtype_policy,
        )
        self.patch_embedding.build_shape = (None, None, None, config.num_channels)

    def build(self, input_shape=None):
        init = keras.initializers.TruncatedNormal(stddev=self.config.initializer_range)
        self.class_embedding = self.add_weight(
            shape=(1, 1, self.embed_dim), initializer=init, name="class_embedding"
        )
        self.position_embedding = self.add_weight(
            shape=(1, self.config.num_positions, self.embed_dim),
            initializer=init,
            name="position_embedding",
        )
        super().build()

    def interpolated_position_embedding(self, grid_height, grid_width):
        """Position embeddings resized to a (grid_height, grid_width) patch grid."""
        class_position = self.position_embedding[:, :1]
        grid = tf.reshape(
            tf.cast(self.position_embedding[0, 1:], tf.float32),
            (self.grid_size, self.grid_size, self.embed_dim),
        )
        rows = bicubic_resize_matrix(grid_height, self.grid_size)
        cols = bicubic_resize_matrix(grid_width, self.grid_size)
        resized = tf.einsum("hi,wj,ijd->hwd", rows, cols, grid)
        resized = tf.reshape(resized, (1, -1, self.embed_dim))
        return tf.concat([class_position, tf.cast(resized, class_position.dtype)], axis=1)

    def call(self, pixel_values, interpolate_pos_encoding=False):
        # Conv2D on CPU needs channels-last; the public input is channels-first like PyTorch.
        patches = self.patch_embedding(tf.transpose(pixel_values, (0, 2, 3, 1)))
        shape = tf.shape(patches)
        batch_size, grid_height, grid_width = shape[0], shape[1], shape[2]
        patches = tf.reshape(patches, (batch_size, -1, self.embed_dim))
        class_tokens = tf.broadcast_to(
            tf.cast(self.class_embedding, patches.dtype), (batch_size, 1, self.embed_dim)
        )
        embeddings = tf.concat([class_tokens, patches], axis=1)
        if interpolate_pos_encoding:
            positions = self.interpolated_position_embedding(grid_height, grid_width)
        else:
            # As PyTorch: a smaller image uses the leading positions.
            positions = self.position_embedding[:, : tf.shape(embeddings)[1]]
        return embeddings + tf.cast(positions, embeddings.dtype)


class BlipMLP(TowerLayer):
    """fc2(activation(fc1(x)))."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.activation = get_activation(config.hidden_act)
        self.fc1 = self.make_dense(config.intermediate_size, "fc1")
        self.fc2 = self.make_dense(config.hidden_size, "fc2", config.intermediate_size)

    def call(self, hidden_states):
        return self.fc2(self.activation(self.fc1(hidden_states)))


class BlipEncoderLayer(TowerLayer):
    """Pre-LN transformer block: h + attn(LN(h)), then h + mlp(LN(h))."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.self_attn = MultiHeadAttention(
            config.hidden_size,
            config.num_attention_heads,
            config.attention_dropout,
            config.initializer_range,
            fused_qkv=True,
            output_projection=True,
            name="self_attn",
            dtype=self.dtype_policy,
        )
        self.layer_norm1 = self.make_layer_norm("layer_norm1")
        self.mlp = BlipMLP(config, name="mlp", dtype=self.dtype_policy)
        self.layer_norm2 = self.make_layer_norm("layer_norm2")

    def call(self, hidden_states, training=False):
        attended, probs, _ = self.self_attn(self.layer_norm1(hidden_states), training=training)
        hidden_states = hidden_states + attended
        hidden_states = hidden_states + self.mlp(self.layer_norm2(hidden_states))
        return hidden_states, probs


class BlipEncoder(TowerLayer):
    """The blocks, `layers.<i>`; TFBlipVisionModel runs them."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.layers = stack(BlipEncoderLayer, config, "layers", self.dtype_policy)


@keras.saving.register_keras_serializable(package="tfblip")
class TFBlipVisionModel(
    PretrainedMixin, QuantizeMixin, BuildsSublayers, ConfigSerializable, keras.Model
):
    """The BLIP ViT: image patches to (B, 1+N, D) states, the class token first.

    `from_pretrained` also takes the vision tower of a full BLIP checkpoint (captioning, VQA,
    retrieval or BlipModel).

    Args:
        config: a `BlipVisionConfig`.
        **kwargs: Keras model arguments (`name`, `dtype`).
    """

    config_class = BlipVisionConfig
    tower_prefixes = ("vision_model.",)

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.embeddings = BlipVisionEmbeddings(config, name="embeddings", dtype=self.dtype_policy)
        self.encoder = BlipEncoder(config, name="encoder", dtype=self.dtype_policy)
        self.post_layernorm = layer_norm(
            config.layer_norm_eps, "post_layernorm", self.dtype_policy, config.hidden_size
        )
        self.build()

    def call(
        self,
        pixel_values=None,
        interpolate_pos_encoding=False,
        output_hidden_states=False,
        output_attentions=False,
        training=False,
    ):
        """Encodes images.

        Args:
            pixel_values: (B, num_channels, H, W) float images, normalized as the processor does.
            interpolate_pos_encoding: resize the position embeddings to the image's patch grid
                (needed for images larger than the config's image_size).
            output_hidden_states: also return the input and every block's hidden states.
            output_attentions: also return every block's attention probabilities.
            training: applies dropout when True.

        Returns:
            BaseModelOutputWithPooling: `last_hidden_state` (B, 1+N, D), `pooler_output` (B, D)
            (the class token), and `hidden_states` / `attentions` tuples when asked for.

        Raises:
            ValueError: pixel_values is missing, not (B, C, H, W), or too large for the
                position embeddings without interpolate_pos_encoding.
        """
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values.")
        pixel_values = tf.convert_to_tensor(pixel_values)
        check_pixel_values(pixel_values, self.config.num_channels)
        check_image_size(pixel_values, self.config, interpolate_pos_encoding)
        pixel_values = tf.cast(pixel_values, self.compute_dtype)
        embeddings = self.embeddings(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding
        )
        arguments = [{"training": training}] * len(self.encoder.layers)
        hidden_states, all_hidden_states, (all_attentions,) = run_layers(
            self.encoder.layers, embeddings, arguments
        )
        last_hidden_state = self.post_layernorm(hidden_states)
        # The class token goes through post_layernorm a second time, as in transformers.
        pooled_output = self.post_layernorm(last_hidden_state[:, 0, :])
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled_output,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )
