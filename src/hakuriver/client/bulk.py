"""Turning one command line into many task specs: `--array` ranges and `--file` command lists. Pure."""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from hakuriver import protocol as p

#: the most tasks one submission may create (a 10,000-task batch is about 2 MB on the wire)
MAX_TASKS = 100_000
ARRAY_INDEX = "HAKURIVER_ARRAY_INDEX"


class BulkError(ValueError):
    """A bad --array range or --file line; the message says which and why."""


def parse_array(text: str) -> tuple[list[int], int]:
    """'1-1000', '0-9:3' (step), '1,5,7-9', each optionally ending in '%K' (at most K at once)
    -> the indices, in order, without repeats, and K (0 = no limit)."""
    text, percent, throttle_text = text.partition("%")
    throttle = 0
    if percent:
        if not throttle_text.isdigit() or int(throttle_text) < 1:
            raise BulkError(f"--array: %K must end the range with a whole number K >= 1, got %{throttle_text!r}")
        throttle = int(throttle_text)
    return _indices(text), throttle


def _indices(text: str) -> list[int]:
    indices: dict[int, None] = {}
    for part in text.split(","):
        part = part.strip()
        rng, _, step_text = part.partition(":")
        start_text, dash, end_text = rng.partition("-")
        try:
            start = int(start_text)
            end = int(end_text) if dash else start
            step = int(step_text) if step_text else 1
        except ValueError:
            raise BulkError(f"--array: {part!r} is not N, N-M or N-M:STEP (whole numbers)") from None
        if start < 0 or end < start or step < 1:
            raise BulkError(f"--array: {part!r} must count up from a number >= 0, with a step >= 1")
        if (end - start) // step + len(indices) >= MAX_TASKS:
            raise BulkError(f"--array: more than {MAX_TASKS} tasks in one submission")
        indices.update((i, None) for i in range(start, end + 1, step))
    return list(indices)


def array_specs(base: p.TaskSpec, indices: Iterable[int]) -> list[p.TaskSpec]:
    """One spec per index, every other field copied from `base`: `{}` in the command, arguments
    and name becomes the index, and so does HAKURIVER_ARRAY_INDEX in the environment."""
    specs = []
    for i in indices:
        text = str(i)
        specs.append(base.replace(
            command=base.command.replace("{}", text),
            args=[a.replace("{}", text) for a in base.args],
            env={**base.env, ARRAY_INDEX: text},
            name=base.name.replace("{}", text),
        ))
    return specs


def file_specs(base: p.TaskSpec, lines: Iterable[str], source: str) -> list[p.TaskSpec]:
    """One spec per command line (shell-style quoting; blank lines and # comments skipped), every
    other field copied from `base`; `{}` in the name becomes the line number."""
    specs = []
    for number, line in enumerate(lines, 1):
        try:
            argv = shlex.split(line, comments=True)
        except ValueError as exc:
            raise BulkError(f"{source} line {number}: {exc}") from None
        if not argv:
            continue
        if len(specs) >= MAX_TASKS:
            raise BulkError(f"{source}: more than {MAX_TASKS} commands in one submission")
        specs.append(base.replace(command=argv[0], args=argv[1:], env=dict(base.env),
                                  name=base.name.replace("{}", str(number))))
    if not specs:
        raise BulkError(f"{source} has no commands (one per line)")
    return specs
