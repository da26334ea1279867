"""`hakuriver.client`: the seed's flags, one action per run, one-line errors, srun-like exit codes.

Exit codes: 0 success; with --wait, the task's own exit code (128+N for a signal, 143 when
killed, 1 when it failed without one or was lost); 1 for an error from or reaching the host;
2 for bad flags or config.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from hakuriver import protocol as p
from hakuriver.cli_common import EXIT_USAGE, add_config_flag, config_or_exit, fail
from hakuriver.client import render
from hakuriver.client.api import ApiError, HostClient, HostUnreachable

# annotations only: importing typing would cost the client ~3 ms of start-up
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

PROG = "hakuriver.client"
WAIT_SLICE = 30.0  # seconds per long-poll request while waiting
EXIT_KILLED = 143
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, like a shell tool killed by it


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + error
        fail(PROG, f"{message} (see {PROG} --help)", EXIT_USAGE)


def _cores(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cores must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--cores must be a whole number >= 1, got {value}")
    return value


def _env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--env expects NAME=VALUE, got {text!r}")
    if not p.ENV_NAME.match(name):
        raise argparse.ArgumentTypeError(f"--env: invalid variable name {name!r} (letters, digits, _; not starting with a digit)")
    return name, value


def _task_id(text: str) -> str:
    if not p.is_task_id(text):
        raise argparse.ArgumentTypeError(f"malformed task ID {text!r}: expected a UUID like 123e4567-e89b-12d3-a456-426614174000")
    return text.lower()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Submit commands to a HakuRiver cluster, wait for them, check, kill, list nodes.",
        usage=f"{PROG} [--config FILE] (--list-nodes | --status ID | --kill ID | [options] -- COMMAND [ARGS...] "
              "| [options] --file FILE)",
    )
    add_config_flag(parser)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--list-nodes", action="store_true", help="show every node: state, cores, free cores, tasks")
    action.add_argument("--status", metavar="ID", type=_task_id,
                        help="show every field of a task's record, or a batch's counts by state")
    action.add_argument("--kill", metavar="ID", type=_task_id,
                        help="kill a task (its whole process tree), or every unfinished task of a batch")
    parser.add_argument("--cores", type=_cores, default=1, metavar="N", help="cores the task needs (default 1)")
    parser.add_argument("--env", type=_env, action="append", default=[], metavar="NAME=VALUE",
                        help="set a variable in the task's environment (repeatable)")
    parser.add_argument("--node", metavar="NAME", default="", help="run only on this node (default: best fit)")
    parser.add_argument("--wait", action="store_true", help="wait for the task to end; exit with its exit code")
    bulk = parser.add_mutually_exclusive_group()
    bulk.add_argument("--array", metavar="RANGE",
                      help="submit one task per index, e.g. 1-1000, 0-99:10 or 1,5,7-9; {} in the command "
                           "becomes the index, also in $HAKURIVER_ARRAY_INDEX")
    bulk.add_argument("--file", metavar="FILE",
                      help="submit one task per line of FILE ('-' for stdin); shell-style quoting, # comments")
    parser.add_argument("--progress", action="store_true",
                        help="with --wait on a batch: show counts by state as they change (default on a terminal)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments, after --")
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """Everything after the first `--` is the command, verbatim (argparse never sees it)."""
    if "--" in argv:
        cut = argv.index("--")
        args = build_parser().parse_args(argv[:cut])
        args.command = argv[cut + 1:]
    else:
        args = build_parser().parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    config = config_or_exit(PROG, args.config)
    client = HostClient(config.network.host_url)
    try:
        code = _dispatch(args, client)
    except (HostUnreachable, ApiError) as exc:
        fail(PROG, str(exc), 1)
    except KeyboardInterrupt:
        fail(PROG, "interrupted (the task, if submitted, keeps running; see --status)", 130)
    except BrokenPipeError:
        # stdout closed early (e.g. piped into `head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)
    sys.exit(code)


def _dispatch(args: argparse.Namespace, client: HostClient) -> int:
    if args.list_nodes:
        print(render.node_table(client.nodes(), time.time()))
        return 0
    if args.status:
        return cmd_status(args.status, client)
    if args.kill:
        return cmd_kill(args.kill, client)
    if args.array is not None or args.file is not None:
        return cmd_submit_batch(args, client)
    return cmd_submit(args, client)


def cmd_status(some_id: str, client: HostClient) -> int:
    """A task's record, or a batch's counts: one ID space, tasks looked up first."""
    try:
        print(render.task_record(client.task(some_id)))
    except ApiError as exc:
        if exc.status != 404:
            raise
        print(render.batch_summary(_batch_or_not_found(client, some_id)))
    return 0


def cmd_kill(some_id: str, client: HostClient) -> int:
    try:
        reply = client.kill(some_id)
    except ApiError as exc:
        if exc.status != 404:
            raise
        _batch_or_not_found(client, some_id)
        reply = client.kill_batch(some_id)
    print(reply.message)
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
    return p.TaskSpec(command=args.command[0], args=args.command[1:], env=dict(args.env), cores=args.cores,
                      cwd=_cwd(), node=args.node)


def _check(specs: list[p.TaskSpec]) -> None:
    for spec in specs:
        problem = p.spec_problem(spec)
        if problem:
            fail(PROG, problem, EXIT_USAGE)


def cmd_submit_batch(args: argparse.Namespace, client: HostClient) -> int:
    from hakuriver.client import bulk  # only bulk submissions pay for shlex

    try:
        if args.array is not None:
            specs = bulk.array_specs(_base_spec(args), bulk.parse_array(args.array))
        else:
            if args.command:
                fail(PROG, "--file takes the commands from the file; give none after '--'", EXIT_USAGE)
            base = p.TaskSpec(command="-", env=dict(args.env), cores=args.cores, cwd=_cwd(), node=args.node)
            specs = bulk.file_specs(base, _read_lines(args.file), args.file)
    except bulk.BulkError as exc:
        fail(PROG, str(exc), EXIT_USAGE)
    _check(specs)
    reply = client.submit(specs, batch=True)
    print(reply.batch_id, flush=True)
    print(f"submitted {len(reply.task_ids)} tasks as batch {reply.batch_id}", file=sys.stderr, flush=True)
    if not args.wait:
        return 0
    view = _wait_batch(client, reply.batch_id, args.progress or sys.stderr.isatty())
    print(render.batch_summary(view))
    return 0 if view.counts.get("completed", 0) == view.total else 1


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
    print(task_id, flush=True)
    if not args.wait:
        return 0
    task = _wait(client, task_id)
    print(render.final_line(task))
    if task.stdout_path:
        print(f"stdout: {task.stdout_path}\nstderr: {task.stderr_path}")
    return exit_code_of(task)


def _wait(client: HostClient, task_id: str) -> p.TaskView:
    while True:
        task = client.wait(task_id, WAIT_SLICE)
        if task.state in ("completed", "failed", "killed", "lost"):
            return task


def exit_code_of(task: p.TaskView) -> int:
    if task.state == "completed":
        return 0
    if task.state == "killed":
        return EXIT_KILLED
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


if __name__ == "__main__":
    main()
