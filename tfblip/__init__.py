"""tfblip: BLIP (vision-language) in TensorFlow / Keras 3, loading PyTorch checkpoints.

The public names load on first use (PEP 562), so `import tfblip` does not import
TensorFlow: the `tfblip` command configures TensorFlow's logging before it loads.
"""

import importlib

__version__ = "0.1.0"

_MODULE_OF = {
    "BlipConfig": "tfblip.configuration",
    "BlipImageProcessor": "tfblip.image_processing",
    "BlipProcessor": "tfblip.processing",
    "BlipTextConfig": "tfblip.configuration",
    "BlipVisionConfig": "tfblip.configuration",
    "CheckpointError": "tfblip.errors",
    "TFBlipForConditionalGeneration": "tfblip.modeling.blip",
    "TFBlipForImageTextRetrieval": "tfblip.modeling.blip",
    "TFBlipForQuestionAnswering": "tfblip.modeling.blip",
    "TFBlipModel": "tfblip.modeling.blip",
    "TFBlipTextLMHeadModel": "tfblip.modeling.text",
    "TFBlipTextModel": "tfblip.modeling.text",
    "TFBlipVisionModel": "tfblip.modeling.vision",
    "export_litert": "tfblip.export.litert",
    "export_saved_model": "tfblip.export.saved_model",
}

__all__ = list(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'tfblip' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    # Cached as a module global, so later lookups no longer reach __getattr__.
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})
