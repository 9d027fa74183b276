"""Shared pytest setup."""

import os

# Must run before anything imports tensorflow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
