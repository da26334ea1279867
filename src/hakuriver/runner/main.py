"""`hakuriver.runner`: check this node's folders and cores, then serve the host until stopped.

SIGTERM or Ctrl-C stops the runner but not its tasks: their parent is the node's keeper, which
outlives the runner and serves the next runner process (an upgrade loses nothing).
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import stat
import sys

from hakuriver import protocol as p
from hakuriver.cli_common import OneLineParser, add_config_flag, config_or_exit, fail
from hakuriver.config import Config
from hakuriver.runner import launch
from hakuriver.runner.agent import Agent, ClusterKey
from hakuriver.runner.journal import Journal
from hakuriver.runner.keeper_link import KeeperGone
from hakuriver.runner.outbox import Outbox
from hakuriver.runner.supervisor import NodeSetup, Supervisor

PROG = "hakuriver.runner"
log = logging.getLogger("hakuriver.runner")


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog=PROG, description="HakuRiver runner: runs tasks on this node.")
    add_config_flag(parser)
    parser.add_argument("--print-systemd-unit", action="store_true",
                        help="print a systemd unit that starts this runner with this --config, and exit")
    args = parser.parse_args(argv)
    config = config_or_exit(PROG, args.config)
    if args.print_systemd_unit:
        from hakuriver.systemd import unit

        print(unit("runner", args.config), end="")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    setup, node = _check_node(config)
    lock = _lock_state_dir(setup.state_dir, node.name)
    node = node.replace(runner_id=_runner_id(setup.state_dir))
    outbox = Outbox(Journal(os.path.join(setup.state_dir, "journal")))
    agent_ref: list[Agent] = []
    supervisor = Supervisor(setup, outbox, on_started=lambda e: agent_ref[0].task_started(e))
    agent = Agent(config.network.host_url, node, config.timing.heartbeat_interval, supervisor, outbox,
                  ClusterKey(config.auth.cluster_key_file), config.network.tls_ca_file)
    agent_ref.append(agent)
    outbox.on_add = agent.result_ready
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        taken_over = supervisor.start()
    except KeeperGone as exc:
        fail(PROG, f"{exc}; check that {setup.state_dir} is on a local disk and writable")
    log.info("runner %s: %d cores %s, host %s", node.name, len(node.core_ids), node.core_ids, config.network.host_url)
    try:
        agent.run(taken_over)
    except (KeyboardInterrupt, SystemExit):
        log.info("runner %s stopping; its tasks keep running under the keeper", node.name)
        agent.leave()
    finally:
        lock.close()


def _check_node(config: Config) -> tuple[NodeSetup, p.NodeInfo]:
    paths = config.paths
    for key, folder in (("shared_dir", paths.shared_dir), ("local_temp_dir", paths.local_temp_dir)):
        if not os.path.isdir(folder):
            fail(PROG, f"[paths] {key} {folder} does not exist or is not a folder; create it or fix the config", 2)
        if not os.access(folder, os.W_OK | os.X_OK):
            fail(PROG, f"[paths] {key} {folder} is not writable by this user; fix its permissions or the config", 2)
    if paths.numactl_path and not (os.path.isfile(paths.numactl_path) and os.access(paths.numactl_path, os.X_OK)):
        fail(PROG, f"[paths] numactl_path {paths.numactl_path} is not an executable file; install numactl or set it to \"\"", 2)
    usable = sorted(os.sched_getaffinity(0))
    wanted = config.runner.cores or len(usable)
    if wanted > len(usable):
        log.warning("[runner] cores = %d but this machine has %d usable cores %s: oversubscribing, "
                    "core IDs 0..%d map onto them in turn", wanted, len(usable), usable, wanted - 1)
    core_ids = usable[:wanted] if wanted <= len(usable) else list(range(wanted))
    name = config.runner.node_name or socket.gethostname()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    state_dir = os.path.join(paths.local_temp_dir, f".hakuriver-runner-{name}")
    setup = NodeSetup(name, paths.shared_dir, paths.local_temp_dir, _numactl_to_exec(paths.numactl_path),
                      config.timing.kill_grace,
                      state_dir, tuple(usable) if wanted > len(usable) else ())
    return setup, p.NodeInfo(name=name, core_ids=core_ids, memory_bytes=memory)


def _numactl_to_exec(path: str) -> str:
    """The numactl to execute for every task: "" when there is none, or when it is numactl
    itself and the keeper makes its one affinity call instead (the task's binding is the same)."""
    if path and launch.binds_like_numactl(path):
        log.info("[paths] numactl_path %s is numactl: the keeper binds each task's cores itself, as "
                 "numactl --physcpubind does, without executing it per task", path)
        return ""
    return path


def _runner_id(state_dir: str) -> str:
    """This runner's ID: made once, kept in its state folder, so that a restart is the same runner
    to the host and a second runner under the same node name is not."""
    path = os.path.join(state_dir, "runner-id")
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read().strip()
        if text:
            return text
    except (OSError, UnicodeDecodeError):
        pass
    text = os.urandom(16).hex()
    try:
        with open(path, "w", encoding="ascii") as fh:
            fh.write(text + "\n")
    except OSError as exc:
        fail(PROG, f"cannot write {path}: {exc.strerror}; check that the state folder is writable")
    return text


def _lock_state_dir(state_dir: str, name: str):  # noqa: ANN202 - the open lock file
    try:
        os.makedirs(state_dir, exist_ok=True)
        st = os.lstat(state_dir)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            fail(PROG, f"the runner's state folder {state_dir} is a link or belongs to another user: someone "
                       "else made it (a runner as root trusts nothing it did not make); remove it, and make "
                       "[paths] local_temp_dir writable by the runner's user only", 2)
        os.chmod(state_dir, 0o700)  # the keeper's socket in it starts programs: this user only
        fh = open(os.path.join(state_dir, "runner.lock"), "w")
    except OSError as exc:
        fail(PROG, f"cannot create the runner's state folder {state_dir}: {exc.strerror}")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fail(PROG, f"another runner named {name} is already running on this machine (set [runner] node_name)")
    return fh


if __name__ == "__main__":
    main()
