"""config.parse_toml reads plain files itself and hands the rest to tomllib: it must always mean
what tomllib says (the same document, or the same refusal)."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hakuriver.config import _parse_simple, default_toml_text, parse_toml

# pieces a config line is made of, the awkward ones included
PIECES = ["[", "]", "[[", "=", " ", "\t", "#", '"', "'", '"""', "\\", ".", "-", "+", "_", "0", "01", "1", "42",
          "1.5", "1.", ".5", "1e3", "true", "false", "True", "nan", "inf", "key", "paths", "a b", "é", "\r", "\x01",
          "\x7f", "\u3000", "\ufeff", ","]
line = st.lists(st.sampled_from(PIECES), max_size=8).map("".join)
document = st.lists(line, max_size=8).map("\n".join)


def _tomllib(text: str) -> object:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return "refused"


@settings(max_examples=3000, deadline=None)
@given(document)
def test_the_subset_never_disagrees_with_tomllib(text):
    simple = _parse_simple(text)
    if simple is not None:  # read here: tomllib reads it the same, with the same types
        expected = tomllib.loads(text)
        assert simple == expected
        assert repr(simple) == repr(expected)  # 1 and 1.0, True and 1 are told apart


value = st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: round(f, 3)),
                  st.text(st.characters(blacklist_characters='"\\', blacklist_categories=("Cc", "Cs")), max_size=12))


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["network", "paths", "timing", "auth"]),
                       st.dictionaries(st.from_regex(r"[a-z_]{1,10}", fullmatch=True), value, max_size=4), max_size=4))
def test_plain_config_files_are_read_without_tomllib(doc):
    text = "".join(f"[{name}]  # section\n" + "".join(f"{k} = {_toml(v)}\t# note\n" for k, v in keys.items())
                   for name, keys in doc.items())
    assert _parse_simple(text) == tomllib.loads(text) == doc


def test_the_packaged_defaults_are_in_the_subset():
    assert _parse_simple(default_toml_text()) == tomllib.loads(default_toml_text())


@pytest.mark.parametrize("text", ['a = "x\\ty"', "a = [1, 2]", "a = 1_000", "a.b = 1", "a = 1e3", "[t]\n[t]", 'a = """x"""'])
def test_the_rest_goes_to_tomllib(text):
    assert _parse_simple(text) is None
    try:
        expected = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        with pytest.raises(tomllib.TOMLDecodeError, match=str(exc).split(" (")[0]):
            parse_toml(text)
    else:
        assert parse_toml(text) == expected
