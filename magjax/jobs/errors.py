"""The one-line errors of a job's expected failures."""

from __future__ import annotations

from magjax.data.loaders import ProblemFormatError


class JobError(Exception):
    """An expected failure; its message is one line naming the thing at fault."""


# Errors a user's input can cause: printed as one line, exit status 2, no traceback.
EXPECTED = (JobError, FileNotFoundError, NotADirectoryError, ProblemFormatError, ValueError)


def one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return " ".join(line.strip() for line in text.splitlines())
