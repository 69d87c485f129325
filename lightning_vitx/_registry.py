"""A tiny name -> (metadata, class) registry, shared by the explainers and the metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Registry"]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


InfoT = TypeVar("InfoT", bound=_Named)
ClsT = TypeVar("ClsT", bound=type)


class Registry(Generic[InfoT]):
    """Registered classes keyed by ``info.name``; each class gets ``info`` as its ``info`` attribute.

    Example::

        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Info:
        ...     name: str
        >>> things = Registry[Info]("thing")
        >>> @things.register(Info("a"))
        ... class A: ...
        >>> things.available(), things.get("a")[1] is A
        (['a'], True)
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[InfoT, type]] = {}

    def register(self, info: InfoT) -> Callable[[ClsT], ClsT]:
        """Class decorator; a duplicate name raises ``ValueError``."""

        def decorate(cls: ClsT) -> ClsT:
            if info.name in self._entries:
                raise ValueError(
                    f"a {self.kind} named {info.name!r} is already registered ({self._entries[info.name][1]})"
                )
            cls.info = info  # type: ignore[attr-defined]
            self._entries[info.name] = (info, cls)
            return cls

        return decorate

    def available(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> tuple[InfoT, type]:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {self.available()}")
        return self._entries[name]

    def create(self, name: str, *args: Any, **options: Any) -> Any:
        return self.get(name)[1](*args, **options)
