"""Problems: schema and loaders, the resumable iterator, the built-in demo tasks,
difficulty filtering, code-test validation and curriculum."""

from magjax.data.loaders import LoadReport, ProblemFormatError, read_problems

__all__ = ["LoadReport", "ProblemFormatError", "read_problems"]
