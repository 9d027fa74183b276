"""What a pipeline step says about an input it could not use: it goes to the dead letters."""

import re
from typing import NamedTuple


class ExampleError(NamedTuple):
    """The reason one input failed (the pipelines write it with the input's path)."""

    reason: str


def failure_reason(error):
    """The useful line of an exception: the message of a failed tf.debugging.Assert (as an
    eager op or inside a graph), else the first line of the error's text."""
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    for pattern in (r"Summarized data: b'(.*?)'", r"assertion failed: \[(.*?)\]"):
        found = re.search(pattern, text)
        if found:
            return found.group(1).replace('\\"', '"')
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = [line for line in lines if not line.endswith(":") and not line.startswith("[[")]
    return (detail or lines or [type(error).__name__])[0]
