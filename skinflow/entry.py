"""``python -m skinflow`` / ``skinflow``: data and LLM commands start without importing Lightning (seconds saved per
call); every other command goes to ``skinflow.cli``."""

from __future__ import annotations

import sys


def _download(argv: list[str]) -> None:
    from skinflow.data.download import download_command

    download_command(argv)


def _audit(argv: list[str]) -> None:
    from skinflow.data.audit import audit_command

    audit_command(argv)


def _captions(argv: list[str]) -> None:
    from skinflow.llm.captions import captions_command

    captions_command(argv)


def _judge(argv: list[str]) -> None:
    from skinflow.llm.judge import judge_command

    judge_command(argv)


DATA_COMMANDS = {"download": _download, "audit-data": _audit, "captions": _captions, "judge": _judge}


def main(argv: list[str] | None = None) -> None:
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] in DATA_COMMANDS:
        DATA_COMMANDS[words[0]](words[1:])
        return
    from skinflow.cli import main as cli_main

    cli_main(argv)
