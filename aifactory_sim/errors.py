"""Errors a user can act on.

`ScenarioError` is raised for anything wrong in what the user wrote (a scenario field, a CLI
argument, an infeasible configuration). Its message names the field path, the value and what is
allowed; the CLI prints it on one line and exits 2.
"""

from __future__ import annotations


class ScenarioError(ValueError):
    """A scenario or argument the user can fix; `str(err)` is the message to show."""

    def __init__(self, message: str, *, path: str | None = None):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)
