"""What every `hakuriver.*` entry point shares: the --config flag and one-line fatal errors."""

from __future__ import annotations

import argparse
import re
import sys

from hakuriver.config import Config, ConfigError, load_config

# annotations only: importing typing would cost the client ~3 ms of start-up
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (not usage + error), exit code 2."""

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
