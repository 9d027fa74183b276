"""Reading and writing BLIP checkpoints.

Hugging Face checkpoints (safetensors, sharded, `pytorch_model.bin`), the original Salesforce
`.pth` files and transformers 4.x `tf_model.h5` files are all read as a PyTorch state dict and
copied into a model by the walk over its layer names (`names`). Importing this package gives
the model classes' `from_pretrained` / `save_pretrained` their implementation
(`tfblip.modeling.pretrained` says why the models do not import it).

Modules: `names` (PyTorch key of every Keras variable), `sources` (tensor sources of each file
format), `loading` (all-or-nothing copy into a model), `deferred` (models built without variable
values, so that loading writes each weight once), `salesforce` and `tf_h5` (readers of those
formats), `hub` (local path or Hub download), `pretrained` (from/save_pretrained).
"""

from tfblip.checkpoints.hub import resolve_checkpoint_path
from tfblip.checkpoints.loading import load_weights
from tfblip.checkpoints.names import pytorch_named_variables, pytorch_state_dict
from tfblip.checkpoints.pretrained import load_pretrained, save_pretrained
from tfblip.checkpoints.sources import open_checkpoint
from tfblip.errors import CheckpointError
from tfblip.modeling.pretrained import register_checkpoint_io

register_checkpoint_io(load_pretrained, save_pretrained)

__all__ = [
    "CheckpointError",
    "load_pretrained",
    "load_weights",
    "open_checkpoint",
    "pytorch_named_variables",
    "pytorch_state_dict",
    "resolve_checkpoint_path",
    "save_pretrained",
]
