"""Weight-only int8 quantization of the models: `model.quantize("int8")`, also reached by
`from_pretrained(..., quantize="int8")`, `tfblip ... --quantize int8` and exports.

Every Dense kernel becomes int8 with one float32 scale per output unit, and every word-embedding
table int8 with one scale per row (also the tied LM head's scale per vocabulary entry). These
are Keras' own int8 layouts and AbsMax quantizers (`keras.quantizers`), so `.keras` files record
them. Activations stay in the compute dtype: each matmul multiplies them by the int8 weights cast
to it, and divides by the scales. Nothing else (LayerNorms, biases, position embeddings, the
patch convolution) is quantized. Weights held: about a quarter of float32's.
"""

import keras
import tensorflow as tf

from tfblip.modeling.common import Dense

QUANTIZATION_MODES = ("int8",)


def check_quantization_mode(mode):
    """Raises ValueError unless `mode` is one tfblip quantizes to (None: no quantization)."""
    if mode is not None and mode not in QUANTIZATION_MODES:
        raise ValueError(
            f"Unknown quantization mode {mode!r}; tfblip quantizes to "
            f"{', '.join(QUANTIZATION_MODES)} (weight-only, one scale per output channel)."
        )


def weight_only_config():
    """Keras' int8 config with its default per-channel weight quantizers and no activation
    quantizer: the activations are not rounded."""
    return keras.quantizers.Int8QuantizationConfig(weight_quantizer=None, activation_quantizer=None)


def is_int8(layer):
    return getattr(layer, "quantization_mode", None) == "int8"


def int8_rows(embedding, ids):
    """Rows `ids` of an int8 Embedding's table in its compute dtype (a gather, then the scale)."""
    rows = tf.cast(tf.gather(embedding._embeddings, ids), embedding.compute_dtype)
    scales = tf.cast(tf.gather(embedding.embeddings_scale, ids), embedding.compute_dtype)
    return rows / scales[..., None]


def embedding_table(embedding):
    """(table, row scales): the (vocab, D) table as stored; the scales are None for a float
    table, else the (vocab,) values its int8 rows are divided by."""
    if is_int8(embedding):
        return embedding._embeddings, embedding.embeddings_scale
    return embedding.embeddings, None


class QuantizeMixin:
    """`quantize("int8")` for the model classes, in place of Keras' `Model.quantize`.

    Keras' default int8 mode also rounds every layer's inputs to int8 at run time, and would
    quantize layers tfblip reads directly; this quantizes the weights tfblip knows how to run.
    A quantized model's `.keras` config says so ("quantize"), and loading it quantizes the
    new model before its weights are read into it.
    """

    @property
    def quantization(self):
        """ "int8" when the weights are quantized, else None."""
        layers = self._flatten_layers(include_self=False)
        return "int8" if any(is_int8(layer) for layer in layers) else None

    def get_config(self):
        config = super().get_config()
        if self.quantization is not None:
            config["quantize"] = self.quantization
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        mode = config.pop("quantize", None)
        model = super().from_config(config)
        if mode is not None:
            model.quantize(mode)
        return model

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        """Quantizes the Dense kernels and word embeddings to int8 in place.

        Args:
            mode: "int8".
            config, filters, **kwargs: not supported (tfblip's scheme is fixed); Keras turns
                `mode` into its default config, which is accepted.

        Raises:
            ValueError: another mode, another config or filters, a model already quantized,
                or a compute dtype that is not floating point.
        """
        check_quantization_mode(mode)
        if mode is None:
            raise ValueError('quantize() needs a mode: model.quantize("int8").')
        default = keras.quantizers.Int8QuantizationConfig().get_config()
        custom_config = config is not None and config.get_config() != default
        if custom_config or filters is not None or kwargs:
            raise ValueError(
                "tfblip models quantize with a fixed scheme (weight-only int8 per output "
                'channel): call quantize("int8") without config or filters.'
            )
        if not keras.backend.is_float_dtype(self.compute_dtype):
            raise ValueError(f"Cannot quantize a model computing in {self.compute_dtype}.")
        layers = [
            layer
            for layer in self._flatten_layers(include_self=False)
            if isinstance(layer, Dense)
            or (isinstance(layer, keras.layers.Embedding) and layer.name == "word_embeddings")
        ]
        if self.quantization is not None:
            raise ValueError(f"This model is already quantized to {self.quantization}.")
        for layer in layers:
            layer.quantize(mode, config=weight_only_config())
