from __future__ import annotations

import gc

import pytest

from hakuriver import codec
from hakuriver import protocol as p
from hakuriver.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    "message",
    [
        p.SubmitRequest(tasks=[p.TaskSpec("sh", ["-c", "echo $X"], {"X": "1"}, 2, "/w", "a")]),
        p.Heartbeat(node=p.NodeInfo("a", [0, 1], 1024), held=["x"], wait=5.0),
        p.Orders(launch=[p.LaunchOrder("t", "true", [], {}, [0])], kill=["u"]),
        p.Report("a", [p.TaskStarted("t", 1.0, "/o", "/e")], [p.TaskFinished("t", 2.0, 1, None, "", False, 1.0)]),
        p.Ack(["t"]),
    ],
)
def test_round_trip(message):
    assert p.decode(p.encode(message), type(message)) == message


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'{"tasks": [{"command": 1}]}', b'{"tasks": [{"cores": 1}]}', b'{"tasks": [{"command": "x", "env": []}]}'],
)
def test_bad_bodies_are_rejected(body):
    with pytest.raises(p.DecodeError):
        p.decode(body, p.SubmitRequest)


@pytest.mark.parametrize(
    "spec, problem",
    [
        (p.TaskSpec("true"), None),
        (p.TaskSpec("true", cores=0), "cores must be a whole number >= 1"),
        (p.TaskSpec("   "), "the command is empty"),
        (p.TaskSpec("true", env={"9X": "1"}), "invalid environment variable name '9X'"),
        (p.TaskSpec("true", env={"X": "a\0b"}), "may not contain NUL"),
        (p.TaskSpec("true", args=["a\0"]), "may not contain NUL"),
    ],
)
def test_spec_problem(spec, problem):
    found = p.spec_problem(spec)
    assert (found is None) if problem is None else (problem in found)


def test_task_ids_are_canonical_uuids():
    assert p.is_task_id("123e4567-e89b-12d3-a456-426614174000")
    assert not p.is_task_id("123e4567e89b12d3a456426614174000")
    assert not p.is_task_id("nope")


# ---- every message, both codecs -------------------------------------------------------------
def _sample(tp, depth: int = 0):  # noqa: ANN001, ANN202 - a value of the annotated type, nothing left at its default
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and issubclass(tp, p.Message):
        return tp(**{name: _sample(ftype, depth + 1) for name, ftype in codec._field_types(tp).items()})
    if origin is list:
        return [_sample(args[0], depth + 1), _sample(args[0], depth + 1)]
    if origin is dict:
        return {"KEY_A": _sample(args[1], depth + 1)}
    if origin in (typing.Union, types.UnionType):
        return _sample(next(a for a in args if a is not type(None)), depth + 1)
    return {str: "text é", int: 7 + depth, float: 2.5 + depth, bool: True}[tp]


MESSAGES = codec._messages()


@pytest.mark.parametrize("kind", MESSAGES, ids=lambda k: k.__name__)
def test_every_message_round_trips_through_both_codecs(kind):
    message = _sample(kind)
    assert p.decode(p.encode(message), kind) == message
    assert p.loads(p.dumps(message), kind) == message
    assert p.decode(p.dumps(message), kind) == message  # what the client sends, the host reads
    assert p.loads(p.encode(message), kind) == message  # and the other way round


@pytest.mark.parametrize("kind", [k for k in MESSAGES if any(v is None for v in k._defaults.values())],
                         ids=lambda k: k.__name__)
def test_optional_fields_round_trip_when_absent(kind):
    message = _sample(kind).replace(**{f: None for f, v in kind._defaults.items() if v is None})
    assert p.decode(p.encode(message), kind) == message
    assert p.loads(p.dumps(message), kind) == message


def test_nested_messages_come_back_as_messages():
    ack = p.decode(p.encode(_sample(p.Ack)), p.Ack)
    assert isinstance(ack.orders, p.Orders) and isinstance(ack.orders.launch[0], p.LaunchOrder)
    page = p.loads(p.dumps(_sample(p.TaskList)), p.TaskList)
    assert isinstance(page.tasks[0], p.TaskView)
    assert [type(x) for x in p.loads(p.dumps([_sample(p.NodeView)]), list[p.NodeView])] == [p.NodeView]


@pytest.mark.parametrize("text, ok", [
    ("123e4567", True), ("123E4567-e8", True), ("123e4567-e89b-12d3-a456-426614174000", True),
    ("123e456", False), ("123e4567x", False), ("", False), ("zzzzzzzz", False),
])
def test_short_ids_are_8_or_more_leading_characters(text, ok):
    assert p.is_id_or_prefix(text) is ok


@pytest.mark.parametrize("name, ok", [("a", True), ("x" * 128, True), ("x" * 129, False), ("tab\there", False)])
def test_names_are_1_to_128_printable_characters(name, ok):
    assert (p.spec_problem(p.TaskSpec("true", name=name)) is None) is ok


def test_threads_decoding_at_once_on_a_fresh_codec_all_succeed(monkeypatch):
    """A runner decodes on two threads from its first second: the lazily built twins must be whole when seen."""
    import threading

    import time

    body = p.encode(_sample(p.Ack))
    monkeypatch.setattr(codec, "_TWINS", None)
    field_types = codec._field_types

    def slow_field_types(cls):  # noqa: ANN001, ANN202 - lets the other threads run mid-build, as a busy machine does
        time.sleep(0.001)
        return field_types(cls)

    monkeypatch.setattr(codec, "_field_types", slow_field_types)
    start, failures = threading.Barrier(8), []

    def decode_many() -> None:
        start.wait()
        for _ in range(20):
            try:
                assert isinstance(p.decode(body, p.Ack).orders, p.Orders)
            except Exception as exc:  # noqa: BLE001 - collected for the assertion below
                failures.append(repr(exc))

    threads = [threading.Thread(target=decode_many) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


@pytest.mark.parametrize("text, seconds", [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("2h", 7200.0), ("1d", 86400.0),
                                           ("1:30:00", 5400.0), ("5:00", 300.0), ("0.5", 0.5), (" 2H ", 7200.0),
                                           ("1h30m", 5400.0), ("1m30s", 90.0), ("2d12h", 216000.0)])
def test_durations_in_every_form(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "0", "soon", "1:60", "-5", "1m30", "1.5.2s", "0:00:00", "1:75:00"])
def test_a_malformed_duration_is_refused(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("field, value, words", [
    ("time_limit", 0.0, "time limit"), ("time_limit", 2e9, "time limit"), ("retries", -1, "--retries"),
    ("retries", 101, "--retries"), ("throttle", -1, "throttle"), ("after", ["nope"], "--after"),
    ("after", ["0123abcd"] * 101, "--after"),
])
def test_control_fields_are_checked_like_the_rest_of_a_spec(field, value, words):
    problem = p.spec_problem(p.TaskSpec(command="true", **{field: value}))
    assert problem is not None and words in problem


@pytest.mark.parametrize("kind", MESSAGES, ids=lambda k: k.__name__)
def test_every_message_compiles_its_constructor_with_the_same_rules(kind):
    assert codec._compiled_init(kind) is not None  # none falls back to the slower generic one
    required = [f for f in kind._fields if f not in kind._defaults]
    values = {name: _sample(ftype) for name, ftype in codec._field_types(kind).items()}
    first, second = kind(**{f: values[f] for f in required}), kind(**{f: values[f] for f in required})
    assert kind.__dict__["__init__"] not in (codec._first_init, codec._generic_init)  # compiled on first use
    for f, default in kind._defaults.items():
        assert getattr(first, f) == default
        if isinstance(default, (list, dict)):  # each message its own copy, never the class's
            assert getattr(first, f) is not getattr(second, f) and getattr(first, f) is not default
    assert kind(**values) == kind.of(dict(values)) == kind(*values.values())
    with pytest.raises(TypeError):
        kind(**values, not_a_field=1)
    if required:
        with pytest.raises(TypeError):
            kind(**{f: values[f] for f in required[1:]})
        with pytest.raises(TypeError):
            kind(values[required[0]], **{required[0]: values[required[0]]})


def _classes_that_cannot_compile() -> list[str]:
    class Odd(codec.Message):  # a required field after one with a default: no def could say that
        a: int = 1
        b: list[int]

    class Clash(codec.Message):  # a name the compiled code could mistake for its own
        _COPY: int = 3

    class Parent(codec.Message):
        a: int = 1

    class Child(Parent):  # not the parent's compiled __init__: its own fields
        b: int = 2

    odd, clash, parent, child = Odd(b=[2]), Clash(), Parent(), Child()
    assert (odd.a, odd.b, clash._COPY, parent.a, child.b) == (1, [2], 3, 1, 2) and vars(child) == {"b": 2}
    assert Odd.__init__ is codec._generic_init and Clash.__init__ is codec._generic_init  # not tried again
    with pytest.raises(TypeError):
        Odd(a=3)
    return [Odd.__name__, Clash.__name__, Parent.__name__]


def test_a_message_whose_fields_make_no_signature_keeps_the_generic_constructor():
    try:
        names = _classes_that_cannot_compile()
    finally:
        gc.collect()  # (a test's message classes must not stay among the wire messages: codec._messages)
    assert not {c.__name__ for c in codec.Message.__subclasses__()} & set(names)
