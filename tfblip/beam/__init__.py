"""Apache Beam pipelines over tfblip SavedModel exports (needs the `beam` extra).

`TFBlipSavedModelHandler` is a RunInference ModelHandler usable in any pipeline; the ready
pipelines (`caption_pipeline`, `embed_pipeline`, `vqa_pipeline`) run from the command line as
`python -m tfblip.beam caption|embed|vqa --model EXPORT_DIR --input PATTERN --output PREFIX`.
"""

try:
    import apache_beam  # noqa: F401
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError(
        "tfblip.beam needs Apache Beam: pip install 'tfblip[beam]' (apache-beam pins "
        "pillow<13 and protobuf<7, so give it its own environment)."
    ) from error

from tfblip.beam.errors import ExampleError
from tfblip.beam.handler import TFBlipSavedModelHandler
from tfblip.beam.pipelines import caption_pipeline, embed_pipeline, load_gallery, vqa_pipeline

__all__ = [
    "ExampleError",
    "TFBlipSavedModelHandler",
    "caption_pipeline",
    "embed_pipeline",
    "load_gallery",
    "vqa_pipeline",
]
