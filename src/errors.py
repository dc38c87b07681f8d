"""The one error base class of the project, and the wrapper that reports it once per command.

A `ProjectError` is a problem with the user's input, files or settings: its message is meant for the
user and is printed as one `error:` line, and the command exits with its `exit_code`. An `OSError`
(a missing, unreadable or unwritable path, a full disk) is reported the same way. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys


class ProjectError(Exception):
    """Bad input, files or settings; the message says what and, where it can, what to do."""

    exit_code = 1


def error_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        return f"error: {e.strerror or e}: {e.filename}"
    text = str(e).strip() or type(e).__name__
    return "error: " + " ".join(text.split("\n"))


def command(main):
    """Wrap a command's `main(argv) -> int`: a ProjectError or OSError becomes one `error:` line on
    stderr and a non-zero exit code, however deep it was raised."""

    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        try:
            return main(argv)
        except (ProjectError, OSError) as e:
            print(error_line(e), file=sys.stderr)
            return e.exit_code if isinstance(e, ProjectError) else 1

    return wrapped
