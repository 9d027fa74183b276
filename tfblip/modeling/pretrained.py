"""`from_pretrained` / `save_pretrained` on the model classes, without importing the readers.

Checkpoint I/O lives in `tfblip.checkpoints`, above the models, which stay plain Keras: these
methods look it up at call time in a registry `tfblip.checkpoints` fills when imported (as
KerasHub's `Backbone.from_preset` reaches its converters through `get_preset_loader`).
"""

import importlib

_implementations = {}


def register_checkpoint_io(load, save):
    """Sets `load(cls, path, config, dtype, image_size, quantize, **hub_kwargs)` and
    `save(model, save_directory)`, the functions behind the two methods."""
    _implementations.update(load=load, save=save)


def _implementation(name):
    if name not in _implementations:
        # By name: an import statement would make the models depend on the readers.
        importlib.import_module("tfblip.checkpoints")  # registers on import
    return _implementations[name]


class PretrainedMixin:
    """`from_pretrained` / `save_pretrained` for the model classes (which set `config_class`).

    A tower class also sets `tower_prefixes`, where full BLIP checkpoints keep its tensors.
    """

    tower_prefixes = ()

    @classmethod
    def checkpoint_arguments(cls, keys):
        """Constructor keyword arguments implied by the checkpoint's PyTorch `keys`; none here."""
        return {}

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        config=None,
        dtype=None,
        image_size=None,
        quantize=None,
        **hub_kwargs,
    ):
        """Builds the model from a checkpoint directory, weights file or hub repo id.

        Besides Hugging Face checkpoints this reads the original Salesforce BLIP `.pth` files
        (config inferred from the tensors) and transformers 4.x TensorFlow `tf_model.h5` files.

        Args:
            pretrained_model_name_or_path: a checkpoint directory, a weights file or a
                Hugging Face Hub repo id (downloaded with huggingface_hub).
            config: the model's config; by default read from the checkpoint.
            dtype: a Keras dtype policy name (e.g. "float32", "mixed_bfloat16").
            image_size: for original Salesforce `.pth` files only: resizes their position
                embeddings (e.g. 224 -> 384).
            quantize: "int8" quantizes the weights after loading (`model.quantize("int8")`):
                weight-only int8, about a quarter of float32's memory.
            **hub_kwargs: options of huggingface_hub's `snapshot_download` (`revision`,
                `cache_dir`, `token`, ...), used for a repo id and ignored for a local path.

        Returns:
            The model with the checkpoint's weights.

        Raises:
            TypeError: for any other keyword argument.
            ValueError: an unknown `quantize` mode.
        """
        return _implementation("load")(
            cls, pretrained_model_name_or_path, config, dtype, image_size, quantize, **hub_kwargs
        )

    def save_pretrained(self, save_directory):
        """Writes config.json + model.safetensors that transformers' PyTorch BLIP loads.

        Args:
            save_directory: the directory to write to.
        """
        _implementation("save")(self, save_directory)
