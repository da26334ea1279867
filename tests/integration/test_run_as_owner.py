"""SPEC §12 "Run as the owner", against real processes and real Unix accounts.

- A root runner runs each task with the uid, gid and groups of the Unix user named like its
  owner: its output files and scratch folder are that user's, so are HOME, USER and LOGNAME;
  the record and `--status` say which Unix user ran it.
- An owner without a Unix account on the node: the task fails saying so, and nothing runs.
- A runner that is not root runs every task as itself, and the record says so.

Accounts are made with useradd and removed (userdel -r) whatever happens, so these tests need
root; the cluster lives in a folder of its own under /tmp that those users can walk through
(pytest's own tmp_path is below a folder only root may enter).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import hakuriver
from support import LocalCluster, Proc, cluster_running, program, write_toml

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="making Unix users and switching to them needs root")]

#: prints what the task runs as: uid, gid, groups, HOME, and the owner of its scratch folder
WHO_AM_I = 'id -u; id -g; id -G; echo "$HOME"; stat -c %u "$HAKURIVER_LOCAL_TEMP_DIR"'


# ---- fixtures --------------------------------------------------------------------------------
@pytest.fixture
def unix_user() -> Iterator[Callable[[str], pwd.struct_passwd]]:
    """Makes Unix users (unique names from a prefix); every one is removed at the end, pass or fail."""
    made: list[str] = []

    def make(prefix: str) -> pwd.struct_passwd:
        name = f"{prefix}_{secrets.token_hex(3)}"
        subprocess.run(["useradd", "--create-home", "--user-group", "--shell", "/bin/sh", name], check=True,
                       capture_output=True)
        made.append(name)
        return pwd.getpwnam(name)

    yield make
    for name in made:
        if subprocess.run(["userdel", "-r", name], capture_output=True).returncode != 0:
            subprocess.run(["userdel", "-r", "-f", name], capture_output=True)  # e.g. a process of it left


@pytest.fixture
def open_root() -> Iterator[Path]:
    """The cluster's folder, which other users may walk through (0755 all the way down from /tmp)."""
    root = Path(tempfile.mkdtemp(prefix="hakuriver-run-as-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cluster(unix_user, open_root, request) -> Iterator[LocalCluster]:  # noqa: ANN001
    """A host, started; runners are each test's own. Stopped before its users are removed."""
    with cluster_running(open_root, request) as c:
        c.shared.chmod(0o755)
        c.start_host()
        yield c


# ---- helpers ---------------------------------------------------------------------------------
def add_user(cluster: LocalCluster, name: str) -> str:
    """A HakuRiver user named `name`; its token."""
    res = subprocess.run(program("host") + ["--config", str(cluster.config), "--add-user", name], capture_output=True,
                         text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()[0].strip()


def run_and_wait(cluster: LocalCluster, script: str, token: str | None = None,
                 ) -> tuple[str, subprocess.CompletedProcess]:
    """Submit `sh -c script` (as the user of `token`, else the first admin) and wait for its end."""
    res = cluster.client("--wait", "--", "sh", "-c", script, cwd="/", env={"HAKURIVER_TOKEN": token} if token else None)
    return res.stdout.splitlines()[0].strip(), res


def status_unix_user(cluster: LocalCluster, task_id: str, token: str) -> str | None:
    res = cluster.client("--status", task_id, env={"HAKURIVER_TOKEN": token})
    assert res.returncode == 0, res.stderr
    found = re.search(r"^Unix user:\s+(\S+)$", res.stdout, re.MULTILINE)
    return found.group(1) if found else None


def as_unix_user(user: pwd.struct_passwd) -> list[str]:
    return ["setpriv", "--reuid", str(user.pw_uid), "--regid", str(user.pw_gid), "--init-groups"]


def python_for(user: pwd.struct_passwd) -> tuple[str, dict[str, str]]:
    """A Python that `user` can start, and the environment that finds this checkout's packages:
    the tests' own, unless it lies where that user may not go (e.g. a pyenv build under /root),
    then the system's of the same version. Probed from a shell, as the runner starts its keeper."""
    env = {"PYTHONPATH": os.pathsep.join([str(Path(hakuriver.__file__).parents[1]), sysconfig.get_paths()["purelib"]])}
    for python in (sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
        probe = subprocess.run([*as_unix_user(user), "/bin/sh", "-c", '"$0" -c "import hakuriver.runner.keeper"',
                                python], env={**os.environ, **env}, capture_output=True, cwd="/")
        if probe.returncode == 0:
            return python, env
    pytest.skip(f"no Python that {user.pw_name} may run has this checkout's packages")


def start_unprivileged_runner(cluster: LocalCluster, name: str, user: pwd.struct_passwd) -> Proc:
    """A runner running as `user`: its folders are that user's, and so is its copy of the cluster key
    (the host's own is root's, mode 0600, as on a node where the administrator copied it)."""
    tmp = cluster.root / f"tmp-{name}"
    tmp.mkdir(mode=0o755)
    key = cluster.root / f"cluster-{name}.key"
    key.write_text(cluster.cluster_key + "\n")
    key.chmod(0o600)
    for path in (tmp, cluster.shared, key):
        os.chown(path, user.pw_uid, user.pw_gid)
    sections = {k: dict(v) for k, v in cluster.base.items()}
    sections["paths"]["local_temp_dir"] = str(tmp)
    sections["auth"]["cluster_key_file"] = str(key)
    sections["runner"] = {"node_name": name, "cores": 1}
    config = write_toml(cluster.root / f"runner-{name}.toml", sections)
    python, env = python_for(user)
    proc = Proc(f"runner-{name}", [python, "-m", "hakuriver.runner.main", "--config", str(config)],
                cluster.root / f"runner-{name}.log", prefix=as_unix_user(user),
                env={**os.environ, **env, "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name})
    cluster.runners[name] = proc
    cluster.procs.append(proc)
    return proc


# ---- tests -----------------------------------------------------------------------------------
def test_a_root_runner_runs_each_task_as_its_owners_unix_user(cluster, unix_user):
    (cluster.root / "tmp-a").mkdir(mode=0o755)
    cluster.start_runner("a", 2)
    cluster.wait_online("a")
    for prefix in ("hr_alice", "hr_bob"):
        account = unix_user(prefix)
        token = add_user(cluster, account.pw_name)
        task_id, res = run_and_wait(cluster, WHO_AM_I, token)
        assert res.returncode == 0, res.stdout + res.stderr
        row = cluster.task(task_id)
        out = Path(row["stdout_path"])
        uid, gid, groups, home, scratch_owner = out.read_text().splitlines()
        assert (uid, gid, home) == (str(account.pw_uid), str(account.pw_gid), account.pw_dir)
        assert set(groups.split()) == {str(g) for g in os.getgrouplist(account.pw_name, account.pw_gid)}
        assert scratch_owner == str(account.pw_uid)
        assert out.stat().st_uid == Path(row["stderr_path"]).stat().st_uid == account.pw_uid
        assert (row["owner"], row["unix_user"]) == (account.pw_name, account.pw_name)
        assert status_unix_user(cluster, task_id, token) == account.pw_name


def test_an_owner_without_a_unix_account_on_the_node_runs_nothing(cluster):
    cluster.start_runner("a", 1)
    cluster.wait_online("a")
    ghost = f"nosuch_{secrets.token_hex(3)}"
    token = add_user(cluster, ghost)
    witness = cluster.root / "ran"
    task_id, res = run_and_wait(cluster, f"touch {witness}", token)
    assert res.returncode != 0
    row = cluster.task(task_id)
    assert row["state"] == "failed" and row["started_at"] is None and row["exit_code"] is None
    assert row["error"] == (f'no Unix user "{ghost}" on node a: tasks run as their owner\'s account; '
                            "create it there, or submit as a user that has one")
    assert row["unix_user"] == ""
    assert not witness.exists()


def test_a_runner_that_is_not_root_runs_every_task_as_itself(cluster, unix_user):
    runner_user = unix_user("hr_runner")
    start_unprivileged_runner(cluster, "u", runner_user)
    cluster.wait_online("u")
    ghost = add_user(cluster, f"nosuch_{secrets.token_hex(3)}")  # no account needed on such a node
    for token in (None, ghost):  # the first admin (named after root), then that user
        task_id, res = run_and_wait(cluster, "id -un; id -u", token)
        assert res.returncode == 0, res.stdout + res.stderr
        row = cluster.task(task_id)
        out = Path(row["stdout_path"])
        assert out.read_text().split() == [runner_user.pw_name, str(runner_user.pw_uid)]
        assert out.stat().st_uid == runner_user.pw_uid
        assert row["unix_user"] == runner_user.pw_name
        assert status_unix_user(cluster, task_id, token or cluster.token) == runner_user.pw_name
