"""`hakuriver.client`: the flags, one action per run, one-line errors (exit codes: client/commands.py)."""

from __future__ import annotations

import argparse
import errno
import os
import sys

from hakuriver import protocol as p
from hakuriver.cli_common import EXIT_USAGE, OneLineParser, add_config_flag, config_or_exit, fail
from hakuriver.client.api import ApiError, HostClient, HostUnreachable
from hakuriver.client.commands import PROG, dispatch
from hakuriver.credentials import CredentialError, read_secret
from hakuriver.durations import parse_duration

# annotations only: importing typing would cost the client ~3 ms of start-up
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, like a shell tool killed by it


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
    if not p.is_id_or_prefix(text):
        raise argparse.ArgumentTypeError(
            f"malformed ID {text!r}: expected a task or batch ID (a UUID like 123e4567-e89b-12d3-a456-426614174000) "
            f"or at least its first {p.MIN_PREFIX} characters")
    return text.lower()


def _count(flag: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit():
            raise argparse.ArgumentTypeError(f"{flag} must be a whole number >= 0, got {text!r}")
        return int(text)

    return parse


def _time_limit(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--time-limit: {exc}") from None


def _retries(text: str) -> int:
    if not text.isdigit() or int(text) > p.MAX_RETRIES:
        raise argparse.ArgumentTypeError(f"--retries must be a whole number from 0 to {p.MAX_RETRIES}, got {text!r}")
    return int(text)


def _after(text: str) -> list[str]:
    ids = [part.strip().lower() for part in text.split(",") if part.strip()]
    bad = next((i for i in ids if not p.is_id_or_prefix(i)), None)
    if not ids or bad is not None:
        raise argparse.ArgumentTypeError(
            f"--after expects task or batch IDs separated by commas (each at least {p.MIN_PREFIX} characters), got {text!r}")
    return ids


def _states(text: str) -> str:
    """--state S[,S...]: checked here too, so that a typo is a usage error."""
    try:
        return ",".join(p.parse_states(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--state: {exc}") from None


def _name(text: str) -> str:
    problem = p.name_problem(text) if text else None  # "" is the default: no name
    if problem:
        raise argparse.ArgumentTypeError(f"--name: {problem}")
    return text


#: flags that only mean something with one action, and that action's flag
_ONLY_WITH = {"state": "list", "batch": "list", "user": "list", "limit": "list",
              "stderr": "logs", "tail": "logs", "follow": "logs", "progress": "wait"}
#: the read actions; the submission flags mean nothing with them (--node and --name also filter --list)
_READS = ("list_nodes", "list", "status", "logs", "kill", "retry_failed")
_SUBMIT_ONLY = ("cores", "env", "wait", "array", "file", "progress", "time_limit", "retries", "after")
#: ... but `--status ID --wait` waits for a task or batch already submitted (as `pueue wait`, `hq job wait`)
_WAIT_ON_STATUS = ("wait", "progress")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Submit commands to a HakuRiver cluster, wait for them, find and read them, kill, list nodes. "
                    "Wherever an ID is asked for, its first 8 or more characters will do.",
        usage=f"{PROG} [--config FILE] (--list-nodes | --list [filters] | --status ID | --logs ID | --kill ID "
              "| --retry-failed ID | [options] -- COMMAND [ARGS...] | [options] --file FILE) [--json]",
    )
    add_config_flag(parser)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--list-nodes", action="store_true", help="show every node: state, cores, free cores, tasks")
    action.add_argument("--list", action="store_true",
                        help="list tasks, newest first (filters: --state --node --batch --name --user --limit)")
    action.add_argument("--status", metavar="ID", type=_task_id,
                        help="show every field of a task's record and its usage, or a batch's counts by state")
    action.add_argument("--logs", metavar="ID", type=_task_id,
                        help="print a task's stdout through the host (--stderr, --tail N, --follow)")
    action.add_argument("--kill", metavar="ID", type=_task_id,
                        help="kill a task (its whole process tree), or every unfinished task of a batch")
    action.add_argument("--retry-failed", metavar="ID", type=_task_id,
                        help="submit again, as one new batch, a task or every task of a batch that ended "
                             "failed, killed, lost or timeout (same command, environment, cores, name, limits)")
    _submit_flags(parser)
    _read_flags(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments, after --")
    return parser


def _submit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cores", type=_cores, default=1, metavar="N", help="cores the task needs (default 1)")
    parser.add_argument("--env", type=_env, action="append", default=[], metavar="NAME=VALUE",
                        help="set a variable in the task's environment (repeatable)")
    parser.add_argument("--node", metavar="NAME", default="",
                        help="run only on this node (default: best fit); with --list: tasks placed on it")
    parser.add_argument("--name", metavar="NAME", type=_name, default="",
                        help="label the task (1-128 characters; {} becomes the --array index or --file line); "
                             "with --list: a shell-style pattern, e.g. 'sweep-*'")
    parser.add_argument("--wait", action="store_true",
                        help="wait for the task (or batch) to end; exit with its exit code (124 if it ran out of "
                             "time); with --status ID: wait for that task or batch, submitted earlier")
    parser.add_argument("--time-limit", metavar="T", type=_time_limit, default=None,
                        help="end the task if it still runs after T (90, 90s, 15m, 2h, 1d, 1:30:00): SIGTERM, "
                             "then SIGKILL after kill_grace; it ends timeout (default: the host's "
                             "[tasks] default_time_limit)")
    parser.add_argument("--retries", metavar="N", type=_retries, default=0,
                        help="run it again, up to N more times, when an attempt ends failed, timeout or lost")
    parser.add_argument("--after", metavar="ID[,ID...]", type=_after, default=[],
                        help="start only once these tasks or batches have all completed; if one ends otherwise, "
                             "the task fails without running")
    bulk = parser.add_mutually_exclusive_group()
    bulk.add_argument("--array", metavar="RANGE",
                      help="submit one task per index, e.g. 1-1000, 0-99:10 or 1,5,7-9; {} in the command "
                           "becomes the index, also in $HAKURIVER_ARRAY_INDEX; RANGE%%K runs at most K at once")
    bulk.add_argument("--file", metavar="FILE",
                      help="submit one task per line of FILE ('-' for stdin); shell-style quoting, # comments")
    parser.add_argument("--progress", action="store_true",
                        help="with --wait on a batch: show counts by state as they change (default on a terminal)")


def _read_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", metavar="S[,S...]", type=_states, default="",
                        help="with --list: only tasks in these states (pending, running, completed, failed, ...)")
    parser.add_argument("--batch", metavar="ID", type=_task_id, help="with --list: only this batch's tasks")
    parser.add_argument("--user", metavar="NAME", default="", help="with --list: only tasks this user submitted")
    parser.add_argument("--limit", metavar="N", type=_count("--limit"), default=p.DEFAULT_LIST_LIMIT,
                        help=f"with --list: show at most N tasks (default {p.DEFAULT_LIST_LIMIT}; 0 = all)")
    parser.add_argument("--stderr", action="store_true", help="with --logs: the task's stderr instead of its stdout")
    parser.add_argument("--tail", metavar="N", type=_count("--tail"), default=0,
                        help="with --logs: only the last N lines")
    parser.add_argument("--follow", action="store_true",
                        help="with --logs: keep printing new output until the task ends")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document (the HTTP API's fields) instead of text")


def parse(argv: list[str]) -> argparse.Namespace:
    """Everything after the first `--` is the command, verbatim (argparse never sees it)."""
    parser = build_parser()
    if "--" in argv:
        cut = argv.index("--")
        args = parser.parse_args(argv[:cut])
        args.command = argv[cut + 1:]
    else:
        args = parser.parse_args(argv)
    _check_combination(args, parser)
    return args


def _check_combination(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """A flag that would be ignored is an error: the user meant something by it."""
    def given(flag: str) -> bool:
        return getattr(args, flag) != parser.get_default(flag)

    for flag, action in _ONLY_WITH.items():
        if given(flag) and not getattr(args, action):
            fail(PROG, f"--{flag} goes with --{action} (see {PROG} --help)", EXIT_USAGE)
    read = next((a for a in _READS if getattr(args, a)), None)
    if read is None:
        return
    shown = "--" + read.replace("_", "-")
    if args.command:
        fail(PROG, f"{shown} takes no command after '--'", EXIT_USAGE)
    for flag in _SUBMIT_ONLY + (() if read == "list" else ("node", "name")):
        if given(flag) and not (read == "status" and flag in _WAIT_ON_STATUS):
            fail(PROG, f"--{flag} goes with a submission, not with {shown} (see {PROG} --help)", EXIT_USAGE)


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    config = config_or_exit(PROG, args.config)
    token, where = _token(config.auth.token_file)
    client = HostClient(config.network.host_url, token=token, ca_file=config.network.tls_ca_file)
    try:
        code = dispatch(args, client)
    except ApiError as exc:
        if exc.status == 401:
            why = f" ({exc})" if token else ""
            fail(PROG, f"the host at {client.url} refused {where}{why}: ask the host's admin for a token "
                       f"(hakuriver.host --add-user NAME) and put it in HAKURIVER_TOKEN or {config.auth.token_file}")
        fail(PROG, str(exc), 1)
    except HostUnreachable as exc:
        fail(PROG, str(exc), 1)
    except KeyboardInterrupt:
        fail(PROG, "interrupted (the task, if submitted, keeps running; see --status)", 130)
    except BrokenPipeError:
        # stdout closed early (e.g. piped into `head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)
    except OSError as exc:  # e.g. stdout on a full disk: one line, not a traceback
        fail(PROG, _output_error(exc) if exc.errno in _WRITE_ERRORS else str(exc), 1)
    sys.exit(code)


def run() -> None:
    """The `hakuriver.client` program: `main`, then an exit without the interpreter's teardown,
    about 3 ms of every call. Once its output is flushed, a client holds nothing that needs one
    (no file open for writing, no thread, no exit hook). (`main` itself exits as usual, so that
    it may be called from Python.)"""
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    os._exit(_flushed(code))


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)  # sys.exit("message"), as the interpreter would
    return 1


def _flushed(code: int) -> int:
    """`code` once stdout and stderr are flushed; what to exit with if stdout cannot be written."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:  # the reader went away after the last write
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # a full disk, an I/O error: the output is not all there
        if code == 0:  # (else the error is said already)
            print(f"{PROG}: error: {_output_error(exc)}", file=sys.stderr)
            code = 1
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except OSError:
        pass
    return code


#: what writing the output may fail with (a full disk, a quota, an I/O error)
_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def _output_error(exc: OSError) -> str:
    return f"cannot write the output: {exc.strerror or exc}"


def _token(token_file: str) -> tuple[str, str]:
    """The user's token, and what to call it if the host refuses it."""
    token = os.environ.get("HAKURIVER_TOKEN", "").strip()
    if token:
        return token, "the token in HAKURIVER_TOKEN"
    try:
        return read_secret(token_file, "token"), f"the token in {token_file}"
    except CredentialError as exc:
        return "", f"a request with no token (HAKURIVER_TOKEN is not set, and {exc})"


if __name__ == "__main__":
    run()
