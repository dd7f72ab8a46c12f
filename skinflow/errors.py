"""What the user gave was wrong (a key, a value, a file, a row): such errors print as one line, not a traceback.

Every kit error class (``DataError``, ``PipelineError``, ``ResumeError``, ...) derives from ``UserError``; the
constructors of stages, DataModules and specs raise ``ConfigError`` for a bad argument. ``user_error`` finds one
in an exception's chain (jsonargparse wraps the constructor's error in its own ``ValueError``).
"""

from __future__ import annotations

import errno
import re


class UserError(ValueError):
    """A mistake in the user's input; the message names the key, file or row."""


class ConfigError(UserError):
    """A constructor argument out of range or inconsistent with another."""


def require(ok: bool, setting: str, value, needs: str) -> None:
    """Raise ``ConfigError("<setting>=<value> <needs>")`` unless ``ok``: the range check of a declared argument.

    >>> require(0.1 > 0, "lr", 0.1, "must be positive")
    >>> require(-1 >= 0, "beta", -1, "must be >= 0")
    Traceback (most recent call last):
    ...
    skinflow.errors.ConfigError: beta=-1 must be >= 0
    """
    if not ok:
        raise ConfigError(f"{setting}={value!r} {needs}")


def user_error(error: BaseException | None) -> UserError | None:
    """The first ``UserError`` in ``error``'s cause/context chain, if any.

    >>> try:
    ...     try:
    ...         raise ConfigError("group_size=1: at least 2")
    ...     except ConfigError as inner:
    ...         raise ValueError("Does not validate against any of the Union subtypes") from inner
    ... except ValueError as outer:
    ...     print(user_error(outer))
    group_size=1: at least 2
    >>> user_error(KeyError("x")) is None
    True
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


WRITE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT)


def write_error(error: BaseException | None) -> str | None:
    """A full, read-only or forbidden place to write, found in ``error``'s cause/context chain, as one line naming
    the file; ``None`` for anything else (a bug keeps its traceback).

    >>> write_error(RuntimeError("saving failed").with_traceback(None)) is None
    True
    >>> err = OSError(errno.ENOSPC, "No space left on device", "mlruns/1/ckpt/last.ckpt")
    >>> write_error(err)
    'cannot write mlruns/1/ckpt/last.ckpt: No space left on device'
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
            where = error.filename or "a file"
            return f"cannot write {where}: {error.strerror}"
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
          "Given value:", "- Expected a <class 'NoneType'>", "tip:")
_LITERAL = re.compile(r"Expected a typing\.Literal\[(.*)\]\. Got value: (.*)$")


def condense_parser_error(message: str) -> str:
    r"""jsonargparse's nested error text -> one line naming the full key (``--model.init_args.loss``) and the
    reason; a ``Literal`` mismatch lists the choices.

    >>> text = '''Parser key "model":
    ...   Does not validate against any of the Union subtypes
    ...   Subtypes: [<class 'lightning.pytorch.core.module.LightningModule'>, <class 'NoneType'>]
    ...   Errors:
    ...     - Problem with given class_path 'skinflow.stages.grpo.GRPOStage':
    ...         Parser key "loss":
    ...           Expected a typing.Literal['grpo', 'dr_grpo', 'dapo']. Got value: grpoo
    ...     - Expected a <class 'NoneType'>
    ...   Given value type: <class 'jsonargparse._util.NestedArg'>
    ...   Given value: NestedArg(key='loss', val='grpoo')'''
    >>> condense_parser_error(text)
    "--model.init_args.loss: 'grpoo' is not one of grpo, dr_grpo, dapo"
    >>> bogus = text.replace("key='loss'", "key='bogus'").splitlines()
    >>> condense_parser_error("\n".join(bogus[:5] + ["        Option 'bogus' is not accepted"] + bogus[7:]))
    '--model.init_args.bogus: no such option of skinflow.stages.grpo.GRPOStage'
    >>> condense_parser_error("unrecognized arguments: --trainer.max_stepz 3")
    'unrecognized arguments: --trainer.max_stepz 3'
    """
    keys = re.findall(r'Parser key "([^"]+)"', message)
    subclass = re.search(r"class_path '([^']+)'", message)
    given = re.search(r"NestedArg\(key='([^']+)'", message)
    reasons = [line.strip() for line in message.splitlines()
               if line.strip() and not line.strip().startswith(_NOISE) and not line.strip().startswith("Parser key")
               and not line.strip().startswith("- Problem with given class_path")]
    reason = reasons[-1] if reasons else message.strip().splitlines()[0]
    if re.fullmatch(r"Option '[^']+' is not accepted", reason) and given and subclass:
        keys = [*keys[:1], given.group(1)]
        reason = f"no such option of {subclass.group(1)}"
    literal = _LITERAL.search(reason)
    if literal:
        choices = ", ".join(c.strip().strip("'\"") for c in literal.group(1).split(","))
        reason = f"{literal.group(2).strip()!r} is not one of {choices}"
    if not keys:
        return reason
    if subclass and len(keys) > 1:
        keys = [keys[0], "init_args", *keys[1:]]
    return f"--{'.'.join(keys)}: {reason}"


MEMORY_KNOBS = ("lower --data.init_args.batch_size (GRPO: --model.init_args.group_size, or --model.init_args."
                "micro_batch_size to score fewer completions at once), set --model.init_args.backbone."
                "gradient_checkpointing true, train LoRA adapters instead of every weight, or shard the model "
                "with --trainer configs/trainer/gpu_bf16_fsdp.yaml (docs/scaling.md)")


def memory_error(error: BaseException | None) -> str | None:
    """Out of memory (a GPU's ``torch.OutOfMemoryError`` or the CPU allocator's refusal), found in ``error``'s
    cause/context chain, as one line: the allocator's first line and the settings that lower the peak.

    >>> import torch
    >>> memory_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\\nmore")).split(";")[0]
    'out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)'
    >>> memory_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 bytes"))[:40]
    "out of memory (DefaultCPUAllocator: can'"
    >>> memory_error(RuntimeError("shape mismatch")) is None
    True
    """
    import torch

    seen = set()
    while error is not None and id(error) not in seen:
        text = str(error)
        if isinstance(error, torch.OutOfMemoryError) or (
                isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)):
            first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
            return f"out of memory ({first}); {MEMORY_KNOBS}"
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
