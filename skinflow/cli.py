"""``skinflow.cli.main``: the command line, callable in-process (tests, notebooks); see ``skinflow.entry``."""

from __future__ import annotations

from skinflow.entry import COMMANDS, main

__all__ = ["COMMANDS", "main"]
