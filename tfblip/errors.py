"""Exceptions shared by the checkpoint readers, and the listing of names in their messages."""


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model, or cannot be read."""


def summarize_names(names, limit=20, sort=True):
    """The first `limit` of `names`, comma-separated, with a count of the ones left out.

    Checkpoint errors name the tensors at fault; a checkpoint that does not fit at all can
    have hundreds, so the message lists the first ones and says how many more there are.

    Args:
        names: the names (strings) to list.
        limit: how many to list at most.
        sort: list them sorted; False keeps the given order (e.g. a reader's schema order).

    Returns:
        e.g. "a, b, c, ... (12 more)".
    """
    names = sorted(names) if sort else list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
