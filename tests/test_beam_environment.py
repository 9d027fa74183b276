"""The Beam pipelines' tests (tests_beam/), run in an environment of their own.

apache-beam pins protobuf<7 (2.77 also pillow<13), and this environment has protobuf 7
(tensorflow-serving-api's), so the `beam` extra cannot be installed beside it. This test builds
a fresh virtual environment with `tfblip[beam]` and this process's TensorFlow version, checks
that its protobuf really differs from ours (else the separate environment would be
pointless), and runs tests_beam there with pytest. It prints the Pillow there: the export
decodes and resizes in the graph, so its captions must not depend on it.
"""

import importlib
import os
import subprocess
import sys

import google.protobuf
import pytest
import tensorflow as tf

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(command, timeout):
    done = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout


def test_beam_pipelines_in_their_own_environment(tmp_path):
    environment = tmp_path / "beam-env"
    _run([sys.executable, "-m", "venv", environment], timeout=300)
    python = environment / "bin" / "python"
    requirements = [
        f"{REPOSITORY}[beam]",
        f"tensorflow=={tf.__version__}",
        "pytest",
        "scikit-image",
    ]
    _run([python, "-m", "pip", "install", "-q", "-e", *requirements], timeout=1200)
    versions = _run(
        [python, "-c", "import PIL, google.protobuf as p; print(PIL.__version__, p.__version__)"],
        timeout=120,
    ).split()
    print(f"beam environment: Pillow {versions[0]}, protobuf {versions[1]}")
    ours = int(google.protobuf.__version__.split(".")[0])
    assert int(versions[1].split(".")[0]) < 7 <= ours, (versions, google.protobuf.__version__)

    output = _run(
        [
            python,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            os.path.join(REPOSITORY, "tests_beam"),
        ],
        timeout=1800,
    )
    summary = output.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, summary


def test_without_beam_the_package_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "tfblip.beam", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'tfblip\[beam\]'"):
        importlib.import_module("tfblip.beam")
