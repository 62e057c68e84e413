"""Typed records that cost nothing to define. Pure; imports nothing of ours.

Every process starts by importing our record classes, and a sidecar's start
is on the path to the first result. ``@dataclass`` builds each class by
generating and compiling Python source (about 1 ms a class here, measured),
and importing ``dataclasses`` pulls in ``inspect``, ``ast``, ``dis`` and
``tokenize`` (about 15 ms more): together a fifth of a sidecar's start-up.
A ``Record`` is declared the same way and checked the same way by mypy
(``dataclass_transform``), but its class is made by a few dict operations:

    class Status(Record):                 # frozen, slotted, eq and hash by value
        elapsed: float
        pid: int | None = None

    class Batch(Record, frozen=False, eq=False):   # mutable, compared by identity
        jobs: list[int] = field(default_factory=list)

Fields are the class's annotations in order (``ClassVar`` ones excepted);
a field with a default is optional, and ``field(default_factory=f)``
makes a fresh default per instance. ``replace(**changes)`` is ``dataclasses.replace``.
"""

from __future__ import annotations

from collections.abc import Callable

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar, TypeVar

__all__ = ["FrozenRecordError", "Record", "field"]

if TYPE_CHECKING:
    from typing_extensions import Self, dataclass_transform
else:

    def dataclass_transform(**_: object) -> Callable[[Any], Any]:
        return lambda obj: obj


if TYPE_CHECKING:
    T = TypeVar("T")
_MISSING: Any = object()


class FrozenRecordError(AttributeError):
    """Assignment to a field of a frozen record (as ``dataclasses.FrozenInstanceError``)."""


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], T]) -> T:
    """A per-instance default: ``field(default_factory=list)`` gives each record its own list."""
    return _Factory(default_factory)  # type: ignore[return-value]  # replaced by a value per instance


def _field_names(namespace: dict[str, Any]) -> list[str]:
    annotations: dict[str, Any] = namespace.get("__annotations__", {})
    names = []
    for name, hint in annotations.items():
        text = hint if isinstance(hint, str) else getattr(hint, "__name__", repr(hint))
        if not (text.startswith("ClassVar") or text.startswith("typing.ClassVar")):
            names.append(name)
    return names


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
class _RecordMeta(type):
    def __new__(
        mcs,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        *,
        frozen: bool = True,
        eq: bool = True,
    ) -> _RecordMeta:
        own = _field_names(namespace)
        inherited: tuple[str, ...] = ()
        defaults: dict[str, Any] = {}
        for base in reversed(bases):
            inherited += getattr(base, "FIELDS", ())
            defaults.update(getattr(base, "_defaults", {}))
        for attr in own:
            if attr in namespace:  # a default: kept aside, since a slot cannot have one
                defaults[attr] = namespace.pop(attr)
        fields = inherited + tuple(f for f in own if f not in inherited)
        seen_default = False
        for attr in fields:
            if attr in defaults:
                seen_default = True
            elif seen_default:
                raise TypeError(f"{name}: field {attr!r} without a default follows one with a default")
        namespace["__slots__"] = tuple(f for f in own if f not in inherited)
        namespace["FIELDS"] = fields
        namespace["_defaults"] = defaults
        if not frozen:  # plain attribute writes, at C speed: mutable records are hot
            namespace.setdefault("__setattr__", object.__setattr__)
            namespace.setdefault("__delattr__", object.__delattr__)
        if not eq:
            namespace["__eq__"] = object.__eq__
            namespace["__hash__"] = object.__hash__
        elif not frozen:
            namespace["__hash__"] = None  # mutable and compared by value: unhashable
        return super().__new__(mcs, name, bases, namespace)


class Record(metaclass=_RecordMeta):
    """Base of every record; see the module's docstring."""

    __slots__ = ()
    FIELDS: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self.FIELDS
        set_ = object.__setattr__
        if not kwargs and len(args) == len(fields):  # the common call: every field, in order
            for name, value in zip(fields, args, strict=False):
                set_(self, name, value)
            return
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__}() takes {len(fields)} arguments, got {len(args)}")
        for name, value in zip(fields, args, strict=False):
            set_(self, name, value)
        for name in fields[len(args) :]:
            if name in kwargs:
                value = kwargs.pop(name)
            else:
                value = self._defaults.get(name, _MISSING)
                if value is _MISSING:
                    raise TypeError(f"{type(self).__name__}() missing argument {name!r}")
                if isinstance(value, _Factory):
                    value = value.make()
            set_(self, name, value)
        if kwargs:
            unknown = ", ".join(sorted(kwargs))
            raise TypeError(f"{type(self).__name__}() got unexpected or repeated arguments: {unknown}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.FIELDS)

    def __setattr__(self, name: str, value: Any) -> None:  # frozen records; see _RecordMeta
        raise FrozenRecordError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise FrozenRecordError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values()))

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS)
        return f"{type(self).__name__}({parts})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self._values())

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        values = {name: getattr(self, name) for name in self.FIELDS}
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no fields {sorted(unknown)}")
        values.update(changes)
        return type(self)(**values)
