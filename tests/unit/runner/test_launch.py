from __future__ import annotations

import os
import shutil

import pytest

from hakuriver.runner import launch


def env(**user: str) -> dict[str, str]:
    return launch.task_env({"PATH": "/bin", "HOME": "/root", "MY_VAR": "runner"}, user, task_id="t1", node="n1",
                           core_ids=[2, 3], shared_dir="/s", temp_dir="/tmp/x")


def test_env_layers_runner_then_user_then_hakuriver():
    e = env(MY_VAR="user")
    assert e["PATH"] == "/bin" and e["MY_VAR"] == "user"
    assert (e["HAKURIVER_TASK_ID"], e["HAKURIVER_NODE"], e["HAKURIVER_CORES"]) == ("t1", "n1", "2,3")
    assert (e["HAKURIVER_SHARED_DIR"], e["HAKURIVER_LOCAL_TEMP_DIR"]) == ("/s", "/tmp/x")
    assert e["OMP_NUM_THREADS"] == e["MKL_NUM_THREADS"] == e["OPENBLAS_NUM_THREADS"] == "2"


def test_user_thread_counts_win():
    e = env(OMP_NUM_THREADS="1")
    assert e["OMP_NUM_THREADS"] == "1" and e["MKL_NUM_THREADS"] == "2"


def test_argv_keeps_arguments_as_they_are_and_argv0_as_written():
    path, argv = launch.task_argv("/bin/echo", "echo", ["a b", "-x", "$Y"], cpus=[2, 3], numactl="")
    assert path == "/bin/echo" and argv == ["echo", "a b", "-x", "$Y"]


def test_argv_with_numactl_binds_the_cores():
    path, argv = launch.task_argv("/bin/echo", "echo", ["x"], cpus=[2, 3], numactl="/usr/bin/numactl")
    assert path == "/usr/bin/numactl"
    assert argv == ["/usr/bin/numactl", "--physcpubind=2,3", "/bin/echo", "x"]


@pytest.mark.skipif(shutil.which("numactl") is None, reason="numactl is not installed (apt-get install numactl)")
def test_numactl_itself_is_recognised():
    assert launch.binds_like_numactl(shutil.which("numactl"))


def test_anything_else_at_numactl_path_is_executed_per_task(tmp_path):
    wrapper = tmp_path / "numactl"
    wrapper.write_text(f"#!/bin/sh\nexec {shutil.which('numactl') or 'true'} \"$@\"\n")
    wrapper.chmod(0o755)
    # a wrapper script (even around numactl), another program, a missing file
    for path in (str(wrapper), "/bin/true", str(tmp_path / "missing")):
        assert not launch.binds_like_numactl(path), path


def test_physical_cpus_identity_or_round_robin_when_oversubscribed():
    assert launch.physical_cpus([2, 3], ()) == [2, 3]
    assert launch.physical_cpus([0, 1, 2, 3], (0, 1)) == [0, 1]
    assert launch.physical_cpus([3], (4, 6)) == [6]


def test_choose_cwd(tmp_path):
    assert launch.choose_cwd(str(tmp_path), "/t") == str(tmp_path)
    assert launch.choose_cwd("/no/such", "/t") == "/t"
    assert launch.choose_cwd("", "/t") == "/t"


def test_locate_command(tmp_path):
    path, problem = launch.locate_command("sh", {"PATH": "/usr/bin:/bin"}, "/")
    assert problem is None and os.path.basename(path) == "sh" and os.access(path, os.X_OK)
    assert "command not found: nope-x" in launch.locate_command("nope-x", {"PATH": "/bin"}, "/")[1]
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\n")
    assert "not executable" in launch.locate_command("./s.sh", {}, str(tmp_path))[1]
    script.chmod(0o755)
    assert launch.locate_command("./s.sh", {}, str(tmp_path)) == (os.path.join(str(tmp_path), "./s.sh"), None)
