"""The one allowed-values check: ``check_choice(name, value, choices)``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, get_args

__all__ = ["check_choice"]


def check_choice(name: str, value: object, choices: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (a ``Literal[...]`` type or an iterable).

    Example::

        >>> from typing import Literal
        >>> check_choice("head_fusion", "median", Literal["mean", "max", "min"])
        Traceback (most recent call last):
        ...
        ValueError: head_fusion must be one of ['mean', 'max', 'min'], got 'median'
    """
    allowed = get_args(choices) or tuple(choices if isinstance(choices, Iterable) else ())
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
