"""One function per client action: fetch through the HostClient, print through render, return the exit code.

Exit codes: 0 success; with --wait, the task's own exit code (128+N for a signal, 143 when
killed, 124 when it ran out of time, 1 when it failed without one or was lost); 1 for an error
from or reaching the host;
2 for bad flags or config.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from hakuriver import protocol as p
from hakuriver.cli_common import EXIT_USAGE, fail
from hakuriver.client import render
from hakuriver.client.api import ApiError, HostClient

# annotations only: importing typing would cost the client start-up time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

PROG = "hakuriver.client"
WAIT_SLICE = 30.0  # seconds per long-poll request while waiting
FOLLOW_SLICE = 10.0  # seconds the host may hold a --logs --follow request open for new output
EXIT_KILLED = 143


def dispatch(args: argparse.Namespace, client: HostClient) -> int:
    if args.list_nodes:
        nodes = client.nodes()
        emit(args, nodes, lambda: render.node_table(nodes, time.time()))
        return 0
    if args.list:
        return cmd_list(args, client)
    if args.status:
        return cmd_status(args, client)
    if args.kill:
        return cmd_kill(args, client)
    if args.retry_failed:
        return cmd_retry_failed(args, client)
    if args.logs:
        return cmd_logs(args, client)
    if args.array is not None or args.file is not None:
        return cmd_submit_batch(args, client)
    return cmd_submit(args, client)


def emit(args: argparse.Namespace, doc: object, text: object) -> None:
    """Print `doc` as one JSON document with --json, else the text that `text()` renders."""
    print(p.dumps(doc).decode() if args.json else text())  # type: ignore[operator]


def cmd_list(args: argparse.Namespace, client: HostClient) -> int:
    filters = {"state": args.state, "node": args.node, "batch": args.batch, "name": args.name, "user": args.user}
    page = client.list_tasks(filters, args.limit)
    emit(args, page, lambda: render.task_table(page, time.time()))
    return 0


def cmd_status(args: argparse.Namespace, client: HostClient) -> int:
    """A task's record or a batch's counts; with --wait, once it has ended, exiting as --wait does."""
    found = _task_else_batch(client, args.status, client.task, lambda view: view)
    if isinstance(found, p.BatchView):
        view = _wait_batch(client, found.batch_id, args.progress or sys.stderr.isatty()) if args.wait else found
        emit(args, view, lambda: render.batch_summary(view))
        return batch_exit_code(view) if args.wait else 0
    task = _wait(client, found.task_id) if args.wait else found
    emit(args, task, lambda: render.task_record(task, time.time()))
    return exit_code_of(task) if args.wait else 0


def cmd_kill(args: argparse.Namespace, client: HostClient) -> int:
    reply = _task_else_batch(client, args.kill, client.kill, lambda view: client.kill_batch(view.batch_id))
    emit(args, reply, lambda: reply.message)
    return 0


def cmd_retry_failed(args: argparse.Namespace, client: HostClient) -> int:
    reply = client.retry_failed(args.retry_failed)
    if args.json:
        emit(args, {"batch_id": reply.batch_id, "task_ids": reply.task_ids}, None)
    else:
        print(reply.batch_id)
    print(f"resubmitted {render.count(len(reply.task_ids), 'task')} as batch {reply.batch_id}", file=sys.stderr, flush=True)
    return 0


def _task_else_batch(client: HostClient, some_id: str, for_task: Callable[[str], Any],
                     for_batch: Callable[[p.BatchView], Any]) -> Any:
    """One ID space: what `for_task` gives for the task with this ID, else `for_batch` for the batch."""
    try:
        return for_task(some_id)
    except ApiError as exc:
        if exc.status != 404:
            raise
    return for_batch(_batch_or_not_found(client, some_id))


def cmd_logs(args: argparse.Namespace, client: HostClient) -> int:
    """Stream a task's output as the host serves it; with --follow, until the task has ended."""
    task_id = client.task(args.logs).task_id
    stream = "stderr" if args.stderr else "stdout"
    out, kept = sys.stdout.buffer, []
    offset, tail = 0, args.tail
    while True:
        start, state, pieces = client.logs(task_id, stream, offset, tail, FOLLOW_SLICE if args.follow else 0.0)
        offset = start
        for piece in pieces:
            offset += len(piece)
            if args.json:
                kept.append(piece)
            else:
                out.write(piece)
        out.flush()
        tail = 0  # only the first request counts lines back from the end
        if not args.follow or state in p.FINAL_STATES:
            break
    if args.json:
        text = b"".join(kept).decode("utf-8", errors="replace")
        print(p.dumps(p.LogView(task_id=task_id, stream=stream, text=text, offset=offset)).decode())
    return 0


def _batch_or_not_found(client: HostClient, some_id: str) -> p.BatchView:
    try:
        return client.batch(some_id)
    except ApiError as exc:
        if exc.status == 404:
            raise ApiError(404, f"no task or batch with ID {some_id}") from None
        raise


def _base_spec(args: argparse.Namespace) -> p.TaskSpec:
    if not args.command:
        fail(PROG, "no command given: put it after '--', e.g. hakuriver.client --cores 1 -- python -V", EXIT_USAGE)
    return p.TaskSpec(command=args.command[0], args=args.command[1:], **_spec_flags(args))


def _spec_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The TaskSpec fields the flags give, the command aside."""
    return {"env": dict(args.env), "cores": args.cores, "cwd": _cwd(), "node": args.node, "name": args.name,
            "time_limit": args.time_limit, "retries": args.retries, "after": args.after}


def _check(specs: list[p.TaskSpec]) -> None:
    for spec in specs:
        problem = p.spec_problem(spec)
        if problem:
            fail(PROG, problem, EXIT_USAGE)


def cmd_submit_batch(args: argparse.Namespace, client: HostClient) -> int:
    from hakuriver.client import bulk  # only bulk submissions pay for shlex

    try:
        if args.array is not None:
            indices, throttle = bulk.parse_array(args.array)
            specs = bulk.array_specs(_base_spec(args).replace(throttle=throttle), indices)
        else:
            if args.command:
                fail(PROG, "--file takes the commands from the file; give none after '--'", EXIT_USAGE)
            specs = bulk.file_specs(p.TaskSpec(command="-", **_spec_flags(args)), _read_lines(args.file), args.file)
    except bulk.BulkError as exc:
        fail(PROG, str(exc), EXIT_USAGE)
    _check(specs)
    reply = client.submit(specs, batch=True)
    if not args.json:
        print(reply.batch_id, flush=True)
    print(f"submitted {render.count(len(reply.task_ids), 'task')} as batch {reply.batch_id}", file=sys.stderr, flush=True)
    if not args.wait:
        if args.json:
            emit(args, {"batch_id": reply.batch_id, "task_ids": reply.task_ids}, None)
        return 0
    view = _wait_batch(client, reply.batch_id, args.progress or sys.stderr.isatty())
    emit(args, view, lambda: render.batch_summary(view))
    return batch_exit_code(view)


def _read_lines(path: str) -> list[str]:
    try:
        if path == "-":
            return sys.stdin.read().splitlines()
        with open(path, encoding="utf-8") as fh:
            return fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        fail(PROG, f"cannot read --file {path}: {getattr(exc, 'strerror', None) or exc}", EXIT_USAGE)


def _wait_batch(client: HostClient, batch_id: str, progress: bool) -> p.BatchView:
    """Long-poll until the batch is done; with progress, redraw the counts about once a second."""
    last = ""
    while True:
        view = client.wait_batch(batch_id, 1.0 if progress else WAIT_SLICE)
        if progress:
            line = render.counts_line(view)
            if line != last:
                print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)
                last = line
        if view.done:
            if progress:
                print(file=sys.stderr)
            return view


def cmd_submit(args: argparse.Namespace, client: HostClient) -> int:
    spec = _base_spec(args)
    _check([spec])
    task_id = client.submit([spec]).task_ids[0]
    if not args.wait:
        emit(args, {"task_id": task_id}, lambda: task_id)
        return 0
    if not args.json:
        print(task_id, flush=True)
    task = _wait(client, task_id)
    emit(args, task, lambda: render.final_line(task) + (
        f"\nstdout: {task.stdout_path}\nstderr: {task.stderr_path}" if task.stdout_path else ""))
    return exit_code_of(task)


def _wait(client: HostClient, task_id: str) -> p.TaskView:
    while True:
        task = client.wait(task_id, WAIT_SLICE)
        if task.state in p.FINAL_STATES:
            return task


def batch_exit_code(view: p.BatchView) -> int:
    """0 if every task of the batch completed, else 1."""
    return 0 if view.counts.get("completed", 0) == view.total else 1


def exit_code_of(task: p.TaskView) -> int:
    if task.state == "completed":
        return 0
    if task.state == "killed":
        return EXIT_KILLED
    if task.state == "timeout":
        return p.EXIT_TIMEOUT
    if task.exit_code is not None and task.exit_code != 0:
        return task.exit_code & 0xFF or 1
    if task.signal is not None:
        return 128 + task.signal
    return 1


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return ""
