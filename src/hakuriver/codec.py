"""The two codecs of the wire messages, and the `Message` base class they work on.

- `encode`/`decode` use msgspec, which validates every type and required field on decode: the
  host and the runners use them for everything they receive from the network. msgspec
  validates against Struct twins of the messages, built on first use from the same
  annotations (read with `typing.get_type_hints`), then hands back the Message classes;
- `dumps`/`loads` use the standard library's json: the client uses them for its requests and
  the host's replies, and so never loads msgspec (about 25 ms of start-up).
The messages themselves are in protocol.py.
"""

from __future__ import annotations

import json
import sys

# annotations only: importing typing would cost the client start-up time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Message:
    """Base of every wire message: fields from the class annotations, defaults from class attributes.

    A list or dict default is copied for each instance. Equality and repr are by fields.
    """

    _fields: tuple[str, ...] = ()
    _defaults: dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = tuple(cls.__dict__.get("__annotations__", {}))
        cls._fields = names
        cls._defaults = {name: cls.__dict__[name] for name in names if name in cls.__dict__}
        if "__init__" not in cls.__dict__:  # its own: never a parent's, compiled for other fields
            cls.__init__ = _first_init  # type: ignore[method-assign]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _generic_init(self, *args, **kwargs)

    @classmethod
    def of(cls, values: dict[str, Any]) -> Any:
        """The message whose fields are `values`, which must name every field and is then the
        message's own: unchecked, for the hot paths that build one from a complete record."""
        obj = cls.__new__(cls)
        obj.__dict__ = values
        return obj

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed: bulk paths copy every field, including ones added later."""
        return type(self)(**{**{f: getattr(self, f) for f in self._fields}, **changes})

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(getattr(self, f) == getattr(other, f) for f in self._fields)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self._fields)})"


def _first_init(self: Message, *args: Any, **kwargs: Any) -> None:
    """The first message of a class gives the class its own __init__, compiled from its fields
    as dataclasses do (0.6 us a message instead of 5), with the same checks: only for the
    classes a process builds, so the client starts light. A class whose fields make no
    signature keeps the generic one."""
    cls = type(self)
    init = _compiled_init(cls) or _generic_init
    cls.__init__ = init  # type: ignore[method-assign]
    init(self, *args, **kwargs)


def _generic_init(self: Message, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    if len(args) > len(cls._fields):
        raise TypeError(f"{cls.__name__} takes at most {len(cls._fields)} values")
    values = dict(zip(cls._fields, args))
    for name, value in kwargs.items():
        if name not in cls._fields or name in values:
            raise TypeError(f"{cls.__name__}: unexpected or repeated field {name!r}")
        values[name] = value
    for name in cls._fields:
        if name in values:
            setattr(self, name, values[name])
        elif name in cls._defaults:
            default = cls._defaults[name]
            setattr(self, name, type(default)(default) if isinstance(default, (list, dict)) else default)
        else:
            raise TypeError(f"{cls.__name__}: missing field {name!r}")


#: the default of a list or dict field in a compiled __init__: each instance gets its own copy
_COPY = object()


def _compiled_init(cls: type[Message]) -> Any:
    """`cls.__init__` as Python code, or None when the fields do not make a signature (a field
    without a default after one with a default) or a name could clash with the code's own (a
    keyword, or one that starts with "_")."""
    import keyword

    params, body, names = [], [], {"_COPY": _COPY}
    for i, name in enumerate(cls._fields):
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_") or name == "self":
            return None
        if name not in cls._defaults:
            if params and "=" in params[-1]:
                return None
            params.append(name)
            body.append(f"    self.{name} = {name}")
            continue
        default = names[f"_d{i}"] = cls._defaults[name]
        if isinstance(default, (list, dict)):
            names[f"_t{i}"] = type(default)
            params.append(f"{name}=_COPY")
            body.append(f"    self.{name} = _t{i}(_d{i}) if {name} is _COPY else {name}")
        else:
            params.append(f"{name}=_d{i}")
            body.append(f"    self.{name} = {name}")
    source = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or "    pass") + "\n"
    exec(source, names)  # noqa: S102 - the source is built from the class's own field names
    init = names["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


class DecodeError(ValueError):
    """A body that is not valid JSON or not the expected message; the text says what is wrong."""


_ENCODER: list[Any] = []  # one msgspec encoder, made on first use (host and runners only)


def encode(obj: Any) -> bytes:
    if not _ENCODER:
        import msgspec  # see the module docstring

        _ENCODER.append(msgspec.json.Encoder(enc_hook=_fields_of))
    return _ENCODER[0].encode(obj)


def _fields_of(obj: Any) -> Any:
    """msgspec's hook for types it does not know: a message is its fields (msgspec recurses)."""
    if isinstance(obj, Message):
        return obj.__dict__
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def decode(data: bytes, kind: Any) -> Any:
    """Parse and validate: wrong types, missing fields and malformed JSON raise DecodeError."""
    import msgspec

    try:
        decoder, twins = _decoder(kind)
        return _from_struct(decoder.decode(data), twins.plans)
    except msgspec.DecodeError as exc:  # msgspec.ValidationError is a subclass
        raise DecodeError(str(exc)) from None


def dumps(obj: Any) -> bytes:
    return json.dumps(_plain(obj), separators=(",", ":")).encode()


def loads(data: bytes, kind: Any) -> Any:
    """Build `kind` (a message class, or list[...] of one) from a trusted JSON reply, unchecked."""
    try:
        return _build(json.loads(data), kind)
    except (ValueError, TypeError, KeyError) as exc:
        raise DecodeError(str(exc)) from None


def _plain(obj: Any) -> Any:
    if isinstance(obj, Message):
        return {f: _plain(getattr(obj, f)) for f in obj._fields}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _build(value: Any, kind: Any) -> Any:
    if getattr(kind, "__origin__", None) is list:  # list[SomeMessage]
        return [_build(v, kind.__args__[0]) for v in value]
    if not (isinstance(kind, type) and issubclass(kind, Message)):
        return value
    nested = _nested(kind)
    return kind(**{k: (_build(v, nested[k]) if k in nested and v is not None else v)
                   for k, v in value.items() if k in kind._fields})


def _field_types(cls: type[Message]) -> dict[str, Any]:
    """The evaluated annotations of a message's own fields."""
    import typing

    hints = typing.get_type_hints(cls, globalns=vars(sys.modules[cls.__module__]), localns={"Any": typing.Any})
    return {name: hints[name] for name in cls._fields}


def _message_in(tp: Any) -> Any:
    """The message class a field holds (directly, optionally, or as a list of them), else None."""
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        item = _message_in(args[0])
        return list[item] if item is not None else None
    if origin in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        return _message_in(present[0]) if len(present) == 1 else None
    return tp if isinstance(tp, type) and issubclass(tp, Message) else None


_NESTED_CACHE: dict[type, dict[str, Any]] = {}


def _nested(cls: type[Message]) -> dict[str, Any]:
    """Fields holding other messages, e.g. BatchView.problems -> list of TaskBrief, Ack.orders -> Orders."""
    if cls not in _NESTED_CACHE:
        found = {name: _message_in(tp) for name, tp in _field_types(cls).items()}
        _NESTED_CACHE[cls] = {name: target for name, target in found.items() if target is not None}
    return _NESTED_CACHE[cls]


def _messages() -> list[type[Message]]:
    """Every message class, in the order they were defined (a message's parts come before it)."""
    return Message.__subclasses__()


# msgspec Struct twins of the messages, built on first use by the host or a runner: msgspec
# validates against them, then `_from_struct` hands back the Message classes everyone uses.
class _Twins:
    def __init__(self, structs: dict[type, Any], plans: dict[Any, tuple[type[Message], frozenset[str]]]) -> None:
        #: message class -> its Struct twin
        self.structs = structs
        #: Struct twin -> (its message class, the fields that may hold messages or lists of them)
        self.plans = plans
        #: what decode() was asked for -> a msgspec decoder of its twin
        self.decoders: dict[Any, Any] = {}


#: built whole, then published in one assignment: threads decoding at once never see half of it
_TWINS: _Twins | None = None


def _decoder(kind: Any) -> tuple[Any, _Twins]:
    global _TWINS
    twins = _TWINS
    if twins is None:
        twins = _TWINS = _build_twins()
    decoder = twins.decoders.get(kind)
    if decoder is None:
        import msgspec

        decoder = twins.decoders[kind] = msgspec.json.Decoder(_twin(kind, twins.structs))
    return decoder, twins


def _twin(tp: Any, structs: dict[type, Any]) -> Any:
    """The type msgspec validates against: each message class replaced by its Struct twin."""
    import functools
    import operator
    import typing

    if isinstance(tp, type) and issubclass(tp, Message):
        return structs[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return list[_twin(args[0], structs)]
    if origin is dict:
        return dict[_twin(args[0], structs), _twin(args[1], structs)]
    if args:  # a union
        return functools.reduce(operator.or_, (_twin(a, structs) for a in args))
    return tp


#: msgspec.structs.astuple, set with the twins (a twin's field values, in order)
_astuple: Any = None


def _build_twins() -> _Twins:
    global _astuple
    import msgspec

    _astuple = msgspec.structs.astuple
    structs: dict[type, Any] = {}
    plans: dict[Any, tuple[type[Message], frozenset[str]]] = {}
    for cls in _messages():  # definition order: a message's parts come before it
        fields = []
        for name, ftype in _field_types(cls).items():
            if name in cls._defaults:
                default = cls._defaults[name]
                if isinstance(default, (list, dict)):
                    default = msgspec.field(default_factory=type(default))
                fields.append((name, _twin(ftype, structs), default))
            else:
                fields.append((name, _twin(ftype, structs)))
        struct = msgspec.defstruct(cls.__name__, fields)
        structs[cls] = struct
        plans[struct] = (cls, frozenset(_nested(cls)))
    return _Twins(structs, plans)


def _from_struct(value: Any, plans: dict[Any, tuple[type[Message], frozenset[str]]]) -> Any:
    """The Message for a validated Struct twin, converting only the fields that can hold messages."""
    plan = plans.get(type(value))
    if plan is not None:
        cls, nested = plan
        obj = cls.__new__(cls)
        fields = obj.__dict__
        fields.update(zip(cls._fields, _astuple(value)))  # (the twin's fields are the message's, in order)
        for f in nested:
            fields[f] = _from_struct(fields[f], plans)
        return obj
    if isinstance(value, list):
        return [_from_struct(v, plans) for v in value]
    return value


def json_schemas(kinds: list[Any], ref_template: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """JSON Schemas of these message types (and lists of them), from the same twins msgspec
    validates against, and the schemas of every message they name (for an OpenAPI document)."""
    import msgspec

    _, twins = _decoder(object)
    return msgspec.json.schema_components([_twin(k, twins.structs) for k in kinds], ref_template=ref_template)
