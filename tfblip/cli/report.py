"""How the `tfblip` commands report: CommandError and the Reporter of failed inputs."""

import sys

from tqdm import tqdm

PROGRESS_MIN_IMAGES = 8


class CommandError(Exception):
    """A failure its message explains fully: reported without a traceback."""


class Reporter:
    """Reports failed inputs and shows progress on stderr; counts the failures.

    The progress bar (tqdm: images done, images/s, time left) is shown only on a terminal,
    for more than PROGRESS_MIN_IMAGES images, and not with --quiet.

    Args:
        command: the subcommand's name, which starts each error line.
        quiet: never show the progress bar.
        stream: where to write (default sys.stderr).
    """

    def __init__(self, command, quiet=False, stream=None):
        self.command = command
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.failures = 0
        self.bar = None

    def error(self, message):
        self.clear()
        print(f"tfblip {self.command}: error: {message}", file=self.stream, flush=True)
        self.failures += 1
        self.draw()

    def start(self, total):
        if not self.quiet and total > PROGRESS_MIN_IMAGES and self.stream.isatty():
            self.bar = tqdm(total=total, file=self.stream, unit="image", dynamic_ncols=True)

    def advance(self, count):
        if self.bar is not None:
            self.bar.update(count)

    def draw(self):
        if self.bar is not None:
            self.bar.refresh()

    def clear(self):
        """Erases the bar, so that a line written to the terminal does not run into it."""
        if self.bar is not None:
            self.bar.clear()

    def finish(self):
        if self.bar is not None:
            self.bar.close()  # leaves the final bar, then a new line
            self.bar = None

    @property
    def exit_code(self):
        return 1 if self.failures else 0
