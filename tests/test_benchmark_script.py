"""scripts/benchmark.py's --cold helpers (the benchmark itself is too slow for the tests)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def bench():
    # benchmark.py imports measure_load_memory from its own directory, as when it is run.
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("benchmark", SCRIPTS / "benchmark.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPTS))
    return module


def test_first_difference_names_the_first_differing_or_missing_line(bench):
    assert bench.first_difference("a\t1\nb\t2\n", "a\t1\nb\t2\n") is None
    assert bench.first_difference("a\t1\nb\t2\nc\t3\n", "a\t1\nb\tX\nc\tY\n") == (
        "b\t2",
        "b\tX",
    )
    assert bench.first_difference("a\t1\n", "a\t1\nb\t2\n") == ("<no line>", "b\t2")


def test_run_child_reports_the_childs_own_peak_memory_and_output(bench, tmp_path):
    script = bench.write_script(
        tmp_path,
        "allocate.py",
        "import sys\nimport numpy as np\nnp.ones(int(sys.argv[1]) // 8)\nprint(sys.argv[2])\n",
    )
    # The parent holds 400 MiB while the child runs: a peak carried over from the parent (as
    # getrusage's ru_maxrss would be) would show up in the small child.
    held = np.ones(400 * 2**20 // 8)
    _, small_peak, output = bench.run_child([script, "0", "done"], str(tmp_path))
    _, large_peak, _ = bench.run_child([script, str(300 * 2**20), "done"], str(tmp_path))
    del held
    assert output == "done\n"
    assert small_peak < 150 * 2**20
    assert 300 * 2**20 < large_peak < small_peak + 350 * 2**20


def test_run_child_raises_with_the_childs_error(bench, tmp_path):
    script = bench.write_script(tmp_path, "fail.py", "raise SystemExit('no such model')\n")
    with pytest.raises(RuntimeError, match="exited with 1:\n.*no such model"):
        bench.run_child([script], str(tmp_path))


def test_tfblip_command_runs_tfblip(bench, tmp_path):
    import tfblip

    command, _ = bench.tfblip_command()
    _, _, output = bench.run_child([*command, "--version"], str(tmp_path))
    assert output == f"tfblip {tfblip.__version__}\n"
