"""`--print-systemd-unit`: a unit file that starts this installation's host or runner.

ExecStart names this Python and module, so the unit runs the same release from the same
environment as the command that printed it, with the same --config (made absolute).
"""

from __future__ import annotations

import os
import shlex
import sys

from hakuriver.credentials import own_name

_HOST = """\
[Unit]
Description=HakuRiver host: queue, scheduler, records, API
Documentation=https://github.com/KohakuBlueleaf/HakuRiver
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exec_start}
User={user}
Restart=always
RestartSec=2
# it answers runners and clients for as long as it runs: give it time to close the database
TimeoutStopSec=20

[Install]
WantedBy=multi-user.target
"""

_RUNNER = """\
[Unit]
Description=HakuRiver runner: runs this node's tasks
Documentation=https://github.com/KohakuBlueleaf/HakuRiver
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exec_start}
# root, so that each task runs as its owner's Unix user
User={user}
# stop the runner only: the node's keeper and the tasks it parents outlive a restart or an upgrade
KillMode=process
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def unit(program: str, config: str | None) -> str:
    """The unit file of `program` ("host" or "runner")."""
    argv = [sys.executable, "-m", f"hakuriver.{program}.main"]
    if config:
        argv += ["--config", os.path.abspath(config)]
    template = _HOST if program == "host" else _RUNNER
    return template.format(exec_start=" ".join(shlex.quote(a) for a in argv), user=own_name())
