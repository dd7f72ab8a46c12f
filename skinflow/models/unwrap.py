"""One helper for the one PEFT detail the kit needs in several places."""

from __future__ import annotations


def bare_model(model):
    """The Qwen2.5-VL model inside a PEFT wrapper (``get_base_model()``), or ``model`` itself when unwrapped.

    >>> class Wrapped:
    ...     def get_base_model(self):
    ...         return "core"
    >>> bare_model(Wrapped()), bare_model("core")
    ('core', 'core')
    """
    return model.get_base_model() if hasattr(model, "get_base_model") else model
