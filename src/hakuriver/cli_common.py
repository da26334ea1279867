"""What every `hakuriver.*` entry point shares: the --config flag and one-line fatal errors."""

from __future__ import annotations

import argparse
import os
import re
import sys

from hakuriver.config import Config, ConfigError, load_config

# annotations only: importing typing would cost the client ~3 ms of start-up
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

EXIT_USAGE = 2


class _Formatter(argparse.HelpFormatter):
    """argparse's help layout, sized as shutil.get_terminal_size would size it, without importing
    shutil (and with it bz2 and lzma): argparse makes a formatter for every add_argument."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, width or _columns() - 2)


def _columns() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (not usage + error), exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # "argument --x: --x must be ..." says the flag twice: the type checks name it themselves
        message = re.sub(r"^argument (\S+): (?=\1)", "", message)
        fail(self.prog, f"{message} (see {self.prog} --help)", EXIT_USAGE)


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="TOML file whose keys override the packaged defaults"
    )


def fail(prog: str, message: str, code: int = 1) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def config_or_exit(prog: str, path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(prog, str(exc), EXIT_USAGE)
