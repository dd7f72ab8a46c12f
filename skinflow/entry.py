"""The front door: ``python -m skinflow <command>`` (also the ``skinflow`` console script, and ``python -m
lightning`` for the four Lightning subcommands, see ``skinflow.lightning_main``).

``COMMANDS`` lists every command with its one-line help. The kit's own commands dispatch here, before Lightning
is imported (their ``--help`` takes a fraction of a second); ``fit``/``validate``/``test``/``predict`` go to
``LightningCLI`` (``skinflow.launcher``).

A mistake in the user's input (``skinflow.errors.UserError``: a bad key, value, file or row, wherever it is
raised) prints as ``error: <message>`` with exit status 2; an interrupted run exits 130 (Ctrl-C) or 143
(SIGTERM). Any other exception is a bug and keeps its traceback. ``--debug`` anywhere on the command line shows
the traceback of user errors too.
"""

from __future__ import annotations

import importlib
import os
import sys

PROG = "python -m skinflow"
LIGHTNING = ("fit", "validate", "test", "predict")
# name -> (module:function taking argv, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("", "train a stage: fit --config configs/experiment/<stage>.yaml"),
    "validate": ("", "one evaluation pass over the validation split"),
    "test": ("", "one evaluation pass over the test split; logs metrics and the prediction table"),
    "predict": ("", "ranked diagnoses for every test image, one CSV row per image (mlruns/predictions/<run>/predict.csv)"),
    "pipeline": ("skinflow.pipeline:pipeline_command", "warmup -> Stage I -> Stage II -> test as MLflow child runs under one parent"),
    "ablate": ("skinflow.ablation:ablate_command", "the paper's ablation grid (rows x seeds), resumable"),
    "compare": ("skinflow.analysis.compare:compare_command", "mean ± std over seeds from the MLflow store: CSV and bar chart"),
    "report": ("skinflow.analysis.report:report_command", "a self-contained HTML report of a pipeline run"),
    "export": ("skinflow.export:export_command", "a stage checkpoint as a PEFT adapter, merged model and DVE weights"),
    "synth": ("skinflow.data.synthetic:synth_command", "write the synthetic lesions and their CSV"),
    "download": ("skinflow.data.download:download_command", "fetch Fitzpatrick17k's images from their URLs, verified by MD5"),
    "audit-data": ("skinflow.data.audit:audit_command", "exact and near-duplicate clusters, blank images: the clean split's input"),
    "captions": ("skinflow.llm.captions:captions_command", "Stage I reference captions from an OpenAI-compatible model"),
    "judge": ("skinflow.llm.judge:judge_command", "an LLM judge's verdicts on a run's test predictions"),
}


def usage() -> str:
    """The top-level ``--help``: every command with one line.

    >>> print(usage().splitlines()[0])
    usage: python -m skinflow <command> [options]   (<command> --help for its options)
    """
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} <command> [options]   (<command> --help for its options)", "",
             "skinflow: SkinFlow (Qwen2.5-VL + Dynamic Vision Encoder, GRPO) on Fitzpatrick17k, tracked in MLflow.", ""]
    groups = (("train and evaluate (LightningCLI: --config <yaml>, --print_config)", LIGHTNING),
              ("runs and results", ("pipeline", "ablate", "compare", "report", "export")),
              ("data", ("synth", "download", "audit-data", "captions", "judge")))
    for title, names in groups:
        lines.append(f"{title}:")
        lines += [f"  {name:<{width}}  {COMMANDS[name][1]}" for name in names]
        lines.append("")
    lines.append("options: --debug (tracebacks for input errors too)")
    return "\n".join(lines)


def run_command(words: list[str], from_argv: bool = False) -> None:
    """Dispatch ``words``; exceptions propagate (``main`` turns them into exit statuses). ``from_argv``: the words
    are ``sys.argv[1:]``, which LightningCLI then reads itself; DDP's launcher re-runs ``sys.argv`` for the other
    ranks, so it must keep them."""
    if not words or words[0] in ("-h", "--help"):
        print(usage())
        if not words:
            sys.exit(2)
        return
    name = words[0]
    if name in LIGHTNING or name.startswith("-"):  # -c/--config before the subcommand is LightningCLI's too
        from skinflow.launcher import lightning_cli

        if from_argv:
            lightning_cli(None)
            return
        saved, sys.argv = sys.argv, sys.argv[:1]  # in-process: LightningCLI warns when sys.argv carries others
        try:
            lightning_cli(words)
        finally:
            sys.argv = saved
        return
    if name not in COMMANDS:
        close = [c for c in COMMANDS if c.startswith(name[:3])]
        raise SystemExit(f"error: unknown command {name!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                         + f"; `{PROG} --help` lists the commands")
    module, function = COMMANDS[name][0].split(":")
    getattr(importlib.import_module(module), function)(words[1:])


def main(argv: list[str] | None = None) -> None:
    words = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in words
    if debug:
        words.remove("--debug")
        if argv is None:
            sys.argv.remove("--debug")  # the environment variable reaches DDP's other ranks instead
        os.environ["JSONARGPARSE_DEBUG"] = "true"
    from skinflow.errors import memory_error, user_error, write_error

    try:
        run_command(words, from_argv=argv is None or list(argv) == sys.argv[1:])
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit as err:
        if type(err).__name__ == "SIGTERMException":  # Lightning raises it as SystemExit(None): 0 would say success
            from skinflow.resume import SIGTERM_EXIT

            sys.exit(SIGTERM_EXIT)
        raise
    except Exception as err:
        found = user_error(err)
        if found is None and type(err).__name__ == "MisconfigurationException":  # Lightning's word for a bad setting
            found = err
        if found is None:
            found = write_error(err)  # a full or read-only disk: one line naming the file
        if found is None:
            found = memory_error(err)  # out of memory: the allocator's line and the settings that lower the peak
        if found is None or debug:
            raise
        print(f"error: {found}", file=sys.stderr)
        sys.exit(2)


def lightning_main(argv: list[str] | None = None) -> None:
    """``python -m lightning <subcommand> ...``: the same CLI, limited to Lightning's own four subcommands."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in COMMANDS and words[0] not in LIGHTNING:
        raise SystemExit(f"error: {words[0]!r} is a skinflow command: {PROG} {words[0]} ...")
    main(argv)
