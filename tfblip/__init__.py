"""tfblip: BLIP (vision-language) in TensorFlow / Keras 3, loading PyTorch checkpoints."""

__version__ = "0.1.0"

from tfblip.checkpoint import CheckpointError
from tfblip.configuration import BlipConfig, BlipTextConfig, BlipVisionConfig
from tfblip.export.saved_model import export_saved_model
from tfblip.image_processing import BlipImageProcessor
from tfblip.modeling.blip import (
    TFBlipForConditionalGeneration,
    TFBlipForImageTextRetrieval,
    TFBlipForQuestionAnswering,
    TFBlipModel,
)
from tfblip.modeling.text import TFBlipTextLMHeadModel, TFBlipTextModel
from tfblip.modeling.vision import TFBlipVisionModel
from tfblip.processing import BlipProcessor

__all__ = [
    "BlipConfig",
    "BlipImageProcessor",
    "BlipProcessor",
    "BlipTextConfig",
    "BlipVisionConfig",
    "CheckpointError",
    "TFBlipForConditionalGeneration",
    "TFBlipForImageTextRetrieval",
    "TFBlipForQuestionAnswering",
    "TFBlipModel",
    "TFBlipTextLMHeadModel",
    "TFBlipTextModel",
    "TFBlipVisionModel",
    "export_saved_model",
]
