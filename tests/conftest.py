"""Shared pytest setup."""

import os
import shutil
import tempfile

# Must run before anything imports tensorflow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Traced graphs go to a cache of this session's own (tfblip.ops.trace_cache), never to the
# user's: the suite exercises the cache (later models of a config run imported graphs) and
# leaves nothing behind. Subprocesses (the CLI tests) inherit it.
_TRACE_CACHE = tempfile.mkdtemp(prefix="tfblip-test-traces-")
os.environ["TFBLIP_TRACE_CACHE"] = _TRACE_CACHE


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_TRACE_CACHE, ignore_errors=True)
