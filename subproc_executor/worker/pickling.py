"""Picklers: how jobs and results become bytes. A leaf module.

A pickler is any object with ``dumps(obj) -> bytes`` and ``loads(data) -> obj``
that both the parent and the workers can import by a qualified name
("package.module:attr"). The sidecar never uses it: payloads cross it opaque.

The default, ``HybridPickler``, tries the C pickler first and falls back to
cloudpickle. Plain pickle is about 8x faster for the common case (a module
function and plain arguments), but it pickles by reference, and a reference
into the parent's ``__main__`` cannot be resolved in a worker, whose
``__main__`` is the sidecar's. So anything that fails to pickle (lambdas,
closures, local classes) or whose bytes mention ``__main__`` goes by value
through cloudpickle. A false positive (data that merely contains the string
"__main__") only costs speed.
"""

from __future__ import annotations

import importlib
import pickle
import types
import weakref
from collections.abc import Callable

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, Protocol, TypeVar
else:
    Protocol = object  # the classes below are interfaces for mypy only

__all__ = [
    "DEFAULT_PICKLER",
    "HybridPickler",
    "Pickler",
    "Sink",
    "dump_into",
    "needs_value",
    "pickler_name",
    "resolve_pickler",
]

_PROTOCOL: Final = pickle.HIGHEST_PROTOCOL
_MAIN_MARK: Final = b"__main__"


class Pickler(Protocol):
    """What ``pickler=`` must provide."""

    def dumps(self, obj: object, /) -> bytes: ...

    def loads(self, data: bytes, /) -> object: ...


class HybridPickler:
    """pickle where it is safe, cloudpickle where it is needed."""

    @staticmethod
    def dumps(obj: object, /) -> bytes:
        try:
            data = pickle.dumps(obj, _PROTOCOL)
        except Exception:
            # Lambdas, closures, local and interactively defined objects.
            return _cloudpickle_dumps(obj)
        if _MAIN_MARK in data:
            return _cloudpickle_dumps(obj)
        return data

    @staticmethod
    def loads(data: bytes, /) -> object:
        # cloudpickle's output is ordinary pickle data (it needs cloudpickle
        # importable to load, which it is, being our dependency).
        return pickle.loads(data)


class Sink(Protocol):
    """A file-like target of a pickle (``wire.shm.Sink``)."""

    def write(self, data: bytes | bytearray | memoryview | pickle.PickleBuffer, /) -> int: ...

    def discard(self) -> None: ...


if TYPE_CHECKING:
    S = TypeVar("S", bound=Sink)
# Writes longer than this are payloads the C pickler writes straight from a
# bytes or str object (it does so for any of 64 KiB or more; its frames of
# opcodes stay under 128 KiB). A reference to __main__ is an opcode, never in
# such a payload, so they are not searched for it.
_FRAME_LIMIT: Final = 256 * 1024


class _MainScan:
    """Passes writes on, noting whether a frame of opcodes mentions ``__main__``."""

    __slots__ = ("saw_main", "sink")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.saw_main = False

    def write(self, data: bytes | bytearray | memoryview | pickle.PickleBuffer) -> int:
        # Frames of opcodes are bytes; payloads may be any buffer (a
        # PickleBuffer, from NumPy arrays, has no len()), and are not searched.
        if not self.saw_main and type(data) is bytes and len(data) <= _FRAME_LIMIT and _MAIN_MARK in data:
            self.saw_main = True
        return self.sink.write(data)


def dump_into(pickler: Pickler, obj: object, new_sink: Callable[[], S], by_value: bool = False) -> S:
    """Pickle ``obj`` into a sink from ``new_sink`` and return the sink.

    The default pickler streams (see ``wire.shm.Sink``): a big payload is
    copied once. Any other pickler's ``dumps`` result is written in one go.
    ``by_value``: the caller knows plain pickle will not do (``needs_value``
    of the job's function), so cloudpickle is used at once instead of after
    a failed or ``__main__``-referencing attempt. Exceptions propagate, with
    every sink made discarded.
    """
    sink = new_sink()
    try:
        if pickler is not HybridPickler:
            sink.write(pickler.dumps(obj))
            return sink
        tried_plain = not by_value
        if tried_plain:
            scan = _MainScan(sink)
            try:
                pickle.Pickler(scan, _PROTOCOL).dump(obj)
                by_value = scan.saw_main
            except Exception:
                by_value = True  # lambdas, closures, local and interactively defined objects
        if by_value:
            if tried_plain:
                sink.discard()
                sink = new_sink()
            import cloudpickle

            cloudpickle.Pickler(sink, _PROTOCOL).dump(obj)
    except BaseException:
        sink.discard()
        raise
    return sink


# {function: whether plain pickle cannot send it by reference}: defined in
# __main__ (a script, a notebook), a lambda, a closure, a local function.
# Weakly keyed: a function the user drops is forgotten.
_by_value: weakref.WeakKeyDictionary[object, bool] = weakref.WeakKeyDictionary()


def needs_value(fn: object) -> bool:
    """Whether a job calling ``fn`` must go by cloudpickle: found once per
    function (a pickle of the function alone, by reference: a few bytes), then
    remembered, so a script's own function is not pickled twice per submit.
    Only plain functions are looked at; anything else (a partial holding big
    arguments, say) goes the usual way, with its own attempt."""
    if type(fn) is not types.FunctionType:
        return False
    try:
        return _by_value[fn]
    except KeyError:
        pass
    try:
        result = _MAIN_MARK in pickle.dumps(fn, _PROTOCOL)
    except Exception:
        result = True
    _by_value[fn] = result
    return result


def _cloudpickle_dumps(obj: object) -> bytes:
    import cloudpickle  # only when needed: a sidecar and most workers never are

    data: bytes = cloudpickle.dumps(obj, _PROTOCOL)
    return data


DEFAULT_PICKLER: Final = "subproc_executor.worker.pickling:HybridPickler"
_cache: dict[str, Pickler] = {}


def pickler_name(pickler: object) -> str:
    """The qualified name the workers will import ``pickler`` by.

    Raises ValueError if ``pickler`` lacks dumps/loads or cannot be found
    again by its name (a local class, an instance built at run time).
    """
    if not (callable(getattr(pickler, "dumps", None)) and callable(getattr(pickler, "loads", None))):
        raise TypeError(f"pickler must have dumps() and loads() methods, got {pickler!r}")
    module = getattr(pickler, "__module__", None)
    qualname = getattr(pickler, "__qualname__", None)
    if isinstance(pickler, type(pickle)):  # a module such as pickle or cloudpickle
        module, qualname = pickler.__name__, None
    if not isinstance(module, str):
        raise ValueError(
            f"pickler {pickler!r} has no importable name: pass a module, class or "
            "module-level object that workers can import"
        )
    name = f"{module}:{qualname}" if qualname else module
    try:
        found: object = resolve_pickler(name)
    except (ImportError, AttributeError):
        found = None
    if found is not pickler:
        raise ValueError(
            f"pickler {pickler!r} cannot be imported back as {name!r}: pass a module, "
            "class or module-level object that workers can import"
        )
    return name


def resolve_pickler(name: str) -> Pickler:
    """Import a pickler by "module" or "module:attr.path"; cached."""
    try:
        return _cache[name]
    except KeyError:
        pass
    module_name, _, attr_path = name.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in filter(None, attr_path.split(".")):
        obj = getattr(obj, part)
    _cache[name] = obj  # type: ignore[assignment]
    return obj  # type: ignore[return-value]
