"""The `tfblip` command (also `python -m tfblip`).

tfblip caption photos/ --num-beams 3
tfblip vqa photo.jpg --question "what is the cat doing?"
tfblip match photo.jpg --text "a cat" --text "a dog"
tfblip embed photos/ --output photos.npy
tfblip convert ./blip-vqa-base ./blip-vqa.keras
tfblip export --model DIR --task caption --output saved_models/blip_caption/1 --num-beams 3

Exit codes: 0 everything worked; 1 some inputs failed (each reported on stderr) or a runtime
error; 2 a usage error (argparse's).

The package's modules, none importing another that imports it back:

* `parser`: the arguments, help texts and usage checks; imports no TensorFlow.
* `report`: CommandError and the Reporter of failed inputs and progress.
* `commands`: what each subcommand does; loads TensorFlow, so `main` imports it only once
  TensorFlow's logging is configured.
"""

import contextlib
import logging
import os
import sys
import tempfile
import traceback
import warnings

from tfblip.cli.parser import build_parser
from tfblip.cli.report import CommandError

__all__ = ["build_parser", "main"]


@contextlib.contextmanager
def _native_stderr_captured():
    """Sends what is written to file descriptor 2 while the block runs to a temporary file,
    and writes it out after all if the block raises, so a failure keeps its explanation."""
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        succeeded = False
        try:
            yield
            succeeded = True
        finally:
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            if not succeeded:
                captured.seek(0)
                sys.stderr.buffer.write(captured.read())
                sys.stderr.flush()


def import_tensorflow_quietly():
    """Imports TensorFlow with its start-up log lines and its Python warnings hidden."""
    # TensorFlow logs "oneDNN custom operations are on", "Could not find cuda drivers", cuInit
    # failures and the like from C++ while it loads and first lists its devices, partly
    # before absl logging starts, where TF_CPP_MIN_LOG_LEVEL does not reach: only catching
    # the native stderr hides them. Level 2 then keeps later C++ errors and drops the rest.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(tensorflow|keras|absl|h5py|google)(\.|$)")
    with _native_stderr_captured():
        import tensorflow as tf

        tf.config.list_physical_devices()


def _describe(error):
    if isinstance(error, (CommandError, ValueError, OSError, ImportError)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def main(argv=None):
    """Runs the `tfblip` command.

    Args:
        argv: the arguments, without the program name; None reads sys.argv.

    Returns:
        The exit code: 0 success, 1 some inputs failed or a runtime error, 130 interrupted.
        Usage errors exit with 2 (argparse raises SystemExit).
    """
    args = build_parser().parse_args(argv)
    problem = args.usage_problem(args)
    if problem:
        args.command_parser.error(problem)
    try:
        if not args.verbose:
            import_tensorflow_quietly()
        from tfblip.cli import commands

        return commands.RUNNERS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) has gone: stop quietly, and keep Python's exit-time flush
        # of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as error:  # noqa: BLE001 - every failure ends as one line on stderr
        if args.verbose:
            traceback.print_exc()
        print(f"tfblip {args.command}: error: {_describe(error)}", file=sys.stderr)
        return 1
