"""A task's files on this node: where an attempt writes, and the file-system chores around it.

Output paths (an earlier attempt's output moved aside), the output folder made, a note of why a
task could not start left in its stderr file, the scratch disk checked for room, a scratch
folder removed. Apart from supervisor.py because none of it needs the supervisor's state or
lock: plain file-system work on paths it is given.
"""

from __future__ import annotations

import contextlib
import os
import shutil

from hakuriver import protocol as p
from hakuriver.core.attempts import numbered_output
from hakuriver.core.model import run_key
from hakuriver.runner import launch

#: a task does not start on a scratch disk with less free space than this
MIN_SCRATCH_BYTES = 1024 * 1024


def task_paths(order: p.LaunchOrder, output_dir: str, local_temp_dir: str) -> launch.TaskPaths:
    """Where the attempt writes: the latest attempt's output at <id>.out and <id>.err, so a
    later attempt first moves the one before it aside (core/attempts.py numbered_output).
    The host orders attempt N+1 only once attempt N has ended or its node has been silent
    for the heartbeat timeout, so attempt N's files exist by then (a rename leaves an open
    file writing on, under its new name)."""
    paths = launch.TaskPaths(
        stdout=os.path.join(output_dir, f"{order.task_id}.out"),
        stderr=os.path.join(output_dir, f"{order.task_id}.err"),
        temp_dir=os.path.join(local_temp_dir, f"hakuriver-task-{run_key(order.task_id, order.attempt)}"),
    )
    if order.earlier_output:
        for path in (paths.stdout, paths.stderr):
            with contextlib.suppress(OSError):  # the earlier attempt may never have written any
                os.rename(path, numbered_output(path, order.earlier_output))
    return paths


def ensure_folder(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        pass  # the keeper's open of each output file then says what is wrong


def note_in_stderr(path: str, problem: str) -> None:
    try:  # O_NOFOLLOW: a root runner never writes through a link planted in the output folder
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"hakuriver: {problem}\n")
    except OSError:
        pass


def remove_folder(path: str) -> None:
    try:
        os.rmdir(path)  # the common case: the task left its scratch folder empty
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def scratch_problem(folder: str) -> str | None:
    try:
        st = os.statvfs(folder)
    except OSError as exc:
        return f"local_temp_dir {folder} is not usable: {exc.strerror}"
    free = st.f_bavail * st.f_frsize
    if free < MIN_SCRATCH_BYTES or st.f_favail == 0:
        return f"local_temp_dir {folder} is full ({free} bytes free); free some space on this node"
    return None
