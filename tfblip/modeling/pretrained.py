"""`from_pretrained` / `save_pretrained` on the model classes, without importing the readers.

Reading and writing checkpoints lives in `tfblip.checkpoints`, which sits above the models: it
builds them, walks their layers and reads files of four formats (safetensors, PyTorch pickles,
Salesforce `.pth`, transformers 4.x `tf_model.h5`). The models stay plain Keras, so this module
imports none of that. Its methods look the implementation up at call time in a registry that
`tfblip.checkpoints` fills when it is imported; when nothing has imported it yet, the first
call imports it by name. (KerasHub's `Backbone.from_preset` reaches its converters the same
way, through `preset_utils.get_preset_loader`.)
"""

import importlib

# The package whose import registers the implementations, by name: naming it in an import
# statement would make the models depend on the checkpoint readers.
_CHECKPOINTS_PACKAGE = "tfblip.checkpoints"
_implementations = {}


def register_checkpoint_io(load, save):
    """Sets the functions behind `from_pretrained` and `save_pretrained`.

    Args:
        load: `load(cls, pretrained_model_name_or_path, config=None, dtype=None,
            image_size=None, **hub_kwargs)`, returning a `cls` model with loaded weights.
        save: `save(model, save_directory)`, writing the checkpoint files.
    """
    _implementations.update(load=load, save=save)


def _implementation(name):
    if name not in _implementations:
        importlib.import_module(_CHECKPOINTS_PACKAGE)  # registers on import
    return _implementations[name]


class PretrainedMixin:
    """`from_pretrained` / `save_pretrained` for the model classes (which set `config_class`).

    A tower class also sets `tower_prefixes`: where full BLIP checkpoints keep its tensors, so
    that it can load its tower from them.
    """

    tower_prefixes = ()

    @classmethod
    def checkpoint_arguments(cls, keys):
        """Constructor arguments that depend on which tensors the checkpoint holds.

        Args:
            keys: the PyTorch keys of the checkpoint's tensors (of this model's tower).

        Returns:
            A dict of keyword arguments for the constructor; none by default.
        """
        return {}

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, config=None, dtype=None, image_size=None, **hub_kwargs
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
            **hub_kwargs: options of huggingface_hub's `snapshot_download` (`revision`,
                `cache_dir`, `token`, ...), used for a repo id and ignored for a local path.
                Any other keyword raises a TypeError.

        Returns:
            The model with the checkpoint's weights.
        """
        load = _implementation("load")
        return load(
            cls,
            pretrained_model_name_or_path,
            config=config,
            dtype=dtype,
            image_size=image_size,
            **hub_kwargs,
        )

    def save_pretrained(self, save_directory):
        """Writes config.json + model.safetensors that transformers' PyTorch BLIP loads."""
        _implementation("save")(self, save_directory)
