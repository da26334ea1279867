"""Tails of log files, counted from the end block by block (never the whole file in memory)."""

from __future__ import annotations

import pytest

from hakuriver.host import logs


@pytest.mark.parametrize("chunk", [1, 3, 1024 * 1024])
@pytest.mark.parametrize("text, lines, expected", [
    (b"a\nb\nc\n", 2, b"b\nc\n"),
    (b"a\nb\nc", 2, b"b\nc"),  # no final newline: the last line still counts
    (b"a\nb\nc\n", 3, b"a\nb\nc\n"),
    (b"a\nb\nc\n", 10, b"a\nb\nc\n"),
    (b"\n\n\n", 2, b"\n\n"),
    (b"one line", 1, b"one line"),
    (b"", 5, b""),
])
def test_tail(tmp_path, monkeypatch, chunk, text, lines, expected):
    monkeypatch.setattr(logs, "CHUNK", chunk)
    path = tmp_path / "log"
    path.write_bytes(text)
    start = logs._tail_start(str(path), lines, len(text))
    assert text[start:] == expected
