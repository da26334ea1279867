"""`--print-systemd-unit`: a unit file that starts this installation's host or runner.

ExecStart names this Python and module, so the unit runs the same release from the same
environment as the command that printed it, with the same --config (made absolute).
"""

from __future__ import annotations

import os
import shlex
import sys

from hakuriver.credentials import own_name

_TEMPLATE = """\
[Unit]
Description={description}
Documentation=https://github.com/KohakuBlueleaf/HakuRiver
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exec_start}
{service}Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"""

#: what differs between the two programs' units: their description and their own [Service] lines
_PROGRAMS = {
    "host": ("HakuRiver host: queue, scheduler, records, API",
             "User={user}\n"
             "# it answers runners and clients for as long as it runs: give it time to close the database\n"
             "TimeoutStopSec=20\n"),
    "runner": ("HakuRiver runner: runs this node's tasks",
               "# root, so that each task runs as its owner's Unix user\n"
               "User={user}\n"
               "# stop the runner only: the node's keeper and the tasks it parents outlive a restart or an upgrade\n"
               "KillMode=process\n"),
}


def unit(program: str, config: str | None) -> str:
    """The unit file of `program` ("host" or "runner")."""
    argv = [sys.executable, "-m", f"hakuriver.{program}.main"]
    if config:
        argv += ["--config", os.path.abspath(config)]
    description, service = _PROGRAMS[program]
    return _TEMPLATE.format(description=description, exec_start=" ".join(shlex.quote(a) for a in argv),
                            service=service.format(user=own_name()))
