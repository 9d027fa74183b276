"""Exceptions shared by the checkpoint readers."""


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model, or cannot be read."""
