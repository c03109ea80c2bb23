"""One writer per run folder: `classic_rl.safe_io.lock_run_dir` (an flock on RUN/.lock) and its use
by `classic-rl train`. A second process on the folder stops with one line naming the holder's PID
(exit 2); a killed holder leaves no stale lock; forked workers do not keep the folder locked."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from classic_rl.cli import main
from classic_rl.safe_io import LOCK_FILE, RunDirLocked, lock_holder, lock_run_dir

REPO = Path(__file__).resolve().parents[1]
HOLD = "import sys, time; from classic_rl.safe_io import lock_run_dir\nwith lock_run_dir(sys.argv[1]):\n    time.sleep(60)\n"


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _wait_for_holder(run: Path, pid: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while lock_holder(run) != pid:
        assert time.monotonic() < deadline, f"process {pid} never took the lock of {run}"
        time.sleep(0.05)


def _holder_process(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], env=_env())
    _wait_for_holder(run, proc.pid)
    return proc


def test_lock_creates_the_folder_writes_the_pid_and_nests(tmp_path):
    run = tmp_path / "new" / "run"
    with lock_run_dir(run) as path:
        assert path == run and (run / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with lock_run_dir(run):  # nested use in the same process is free
            pass
        assert lock_holder(run) is None  # not *another* process
        probe = subprocess.run([sys.executable, "-c", HOLD, str(run)], env=_env(), capture_output=True, text=True)
        assert probe.returncode == 1 and f"(PID {os.getpid()} holds {run / LOCK_FILE})" in probe.stderr
    with lock_run_dir(run):  # released at the end of the block
        pass


def test_second_process_is_refused_with_the_holders_pid(tmp_path):
    run = tmp_path / "run"
    holder = _holder_process(run)
    try:
        with pytest.raises(RunDirLocked, match=f"{run} is in use by another run \\(PID {holder.pid} holds"):
            with lock_run_dir(run):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_sigkilled_holder_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    holder = _holder_process(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (run / LOCK_FILE).read_text().strip() == str(holder.pid)  # the file stays, with the dead PID ...
    assert lock_holder(run) is None  # ... but nobody holds it
    with lock_run_dir(run):
        assert (run / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_forked_children_do_not_keep_the_folder_locked(tmp_path):
    run = tmp_path / "run"
    with lock_run_dir(run):
        child = os.fork()
        if child == 0:  # a worker process: it outlives the run's lock
            time.sleep(3)
            os._exit(0)
    try:
        probe = subprocess.run([sys.executable, "-c", HOLD.replace("60", "0"), str(run)], env=_env(), timeout=60)
        assert probe.returncode == 0  # another process could take the lock while the child lives
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "classic_rl", *args], env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_resumes_of_one_run_exactly_one_writes(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "ppo", "CartPole-v1", "--steps", "2048", "--out", str(run), "--quiet",
                 "--eval-episodes", "1"]) == 0
    first = _cli("train", "ppo", "CartPole-v1", "--steps", "16384", "--resume", str(run), "--quiet",
                 "--eval-episodes", "1")
    try:
        _wait_for_holder(run, first.pid)
        # Freeze the first while the second starts, so that it is surely still running then.
        first.send_signal(signal.SIGSTOP)
        second = _cli("train", "ppo", "CartPole-v1", "--steps", "16384", "--resume", str(run), "--quiet")
        out, err = second.communicate(timeout=300)
        assert second.returncode == 2, err
        assert err == (f"classic-rl train: error: {run} is in use by another run (PID {first.pid} holds "
                       f"{run / LOCK_FILE}); wait for it to finish or stop it, then try again\n")
        fresh = _cli("train", "ppo", "CartPole-v1", "--steps", "64", "--out", str(run), "--quiet")
        _, err = fresh.communicate(timeout=300)
        assert fresh.returncode == 2 and f"--out {run} is in use by another run (PID {first.pid} holds" in err
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    episodes = [int(row["episode"]) for row in csv.DictReader(open(run / "episodes.csv"))]
    assert episodes == list(range(1, len(episodes) + 1))  # no episode logged twice, none lost
    assert lock_holder(run) is None
