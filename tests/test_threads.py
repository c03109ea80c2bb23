"""torch's thread count per process: the --num_threads flag, else OMP_NUM_THREADS, else one per
process (never more than the cores allow), set before the agent is built, and passed to workers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from classic_rl import threads
from classic_rl.safe_io import UserError
from classic_rl.threads import choose_num_threads, local_processes, pop_num_threads_flag

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread_after(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    yield
    torch.set_num_threads(1)  # the suite's setting (conftest)


def test_flag_wins_then_omp_num_threads_then_the_default(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    assert choose_num_threads(None, 1) == (1, "from 16 cores, 1 process")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_num_threads(None, 1) == (3, "from OMP_NUM_THREADS")  # a user's setting keeps working
    assert choose_num_threads(2, 1) == (2, "from --num_threads")


def test_the_default_never_oversubscribes_the_cores(monkeypatch):
    monkeypatch.setattr(threads, "DEFAULT_PER_PROCESS", 8)
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    assert choose_num_threads(None, 4)[0] == 4  # 16 cores shared by 4 processes
    assert choose_num_threads(None, 1)[0] == 8
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    assert choose_num_threads(None, 4) == (1, "from 2 cores, 4 processes")  # at least one


def test_local_processes_counts_launcher_ranks(monkeypatch):
    assert local_processes(3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun / accelerate launch
    assert local_processes(1) == 4


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_bad_values_are_user_errors(monkeypatch, bad):
    with pytest.raises(UserError, match="--num_threads"):
        pop_num_threads_flag(["--num_threads", bad])
    monkeypatch.setenv("OMP_NUM_THREADS", bad)
    with pytest.raises(UserError, match="OMP_NUM_THREADS"):
        choose_num_threads(None, 1)


def test_pop_num_threads_flag_takes_both_spellings():
    argv = ["--model", "m", "--num_threads", "2", "--lr", "1"]
    assert pop_num_threads_flag(argv) == 2 and argv == ["--model", "m", "--lr", "1"]
    argv = ["--num_threads=3"]
    assert pop_num_threads_flag(argv) == 3 and argv == []
    assert pop_num_threads_flag(["--lr", "1"]) is None


def test_worker_processes_use_the_runs_count(monkeypatch):
    from classic_rl.workers import make_pool

    class Probe:
        def threads(self):
            return torch.get_num_threads()

    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # what configure_threads exports for the children
    pool = make_pool(Probe, [()] * 2, name="probe")
    try:
        assert pool.call("threads", [(), ()]) == [3, 3]
    finally:
        pool.close()


def test_rlhf_cli_strips_the_flag_and_prints_one_line_at_the_end(monkeypatch, capsys):
    import rlhf.cli

    seen = []
    monkeypatch.setattr(rlhf.cli, "resolve", lambda command: lambda rest: seen.append((list(rest),
                                                                                         torch.get_num_threads())))
    assert rlhf.cli.main(["sft", "--model_name_or_path", "m", "--num_threads", "2"]) == 0
    assert seen == [(["--model_name_or_path", "m"], 2)]  # stripped, and set before the command ran
    assert capsys.readouterr().err == ("rlhf sft: threads: 2 per process (from --num_threads; set --num_threads "
                                       "or OMP_NUM_THREADS to change)\n")

    def bad_input(rest):
        raise ValueError("--learning_rate must be positive")

    monkeypatch.setattr(rlhf.cli, "resolve", lambda command: bad_input)
    assert rlhf.cli.main(["sft", "--num_threads", "1"]) == 2
    assert capsys.readouterr().err == "rlhf sft: error: --learning_rate must be positive\n"  # still one line


def _train(tmp_path, name, env_update, *extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(env_update, PYTHONPATH=str(REPO))
    out = tmp_path / name
    proc = subprocess.run(
        [sys.executable, "-m", "classic_rl", "train", "ppo", "CartPole-v1", "--steps", "256", "--eval-episodes",
         "2", "--set", "n_steps=64", "--out", str(out), *extra],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    return proc.stderr, (summary["eval_return_mean"], (out / "episodes.csv").read_text().splitlines())


def _numbers(run):
    mean, rows = run
    return mean, [row.rsplit(",", 1)[0] for row in rows]  # without wall_s


def test_cli_default_is_one_thread_and_gives_the_numbers_of_omp_num_threads_1(tmp_path):
    err, default = _train(tmp_path, "default", {})
    cores = threads.available_cores()
    assert f"threads: 1 per process (from {cores} cores, 1 process; set --num_threads" in err
    _, omp = _train(tmp_path, "omp", {"OMP_NUM_THREADS": "1"}, "--quiet")
    err, flag = _train(tmp_path, "flag", {}, "--num_threads", "1")
    assert "threads: 1 per process (from --num_threads;" in err
    assert _numbers(default) == _numbers(omp) == _numbers(flag)


def test_cli_num_threads_zero_is_a_one_line_error(tmp_path, capsys):
    from classic_rl.cli import main

    assert main(["train", "ppo", "CartPole-v1", "--steps", "64", "--num_threads", "0", "--quiet",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--num_threads must be a positive integer" in err
    assert not (tmp_path / "run").exists()
