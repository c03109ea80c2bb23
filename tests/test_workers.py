"""classic_rl.workers: the worker pool behind ARS and D4PG, on local processes and on a local Ray.

The Ray tests start one local Ray instance with 2 CPUs for the module (as CI's 2-core machine
has), so they need `ray` installed (it is in the `dev` extra).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import ray  # in the dev extra, so CI runs the Ray backend
from safetensors.torch import load_file

import classic_rl
from classic_rl.cli import main as cli_main
from classic_rl.workers import WorkerError, make_pool


class Echo:
    """A test worker: answers with its rank, dies or hangs on request."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.calls = 0

    def work(self, x: int) -> tuple[int, int, int]:
        self.calls += 1  # state kept between rounds
        return self.rank, x * x, self.calls

    def fail(self) -> None:
        raise ZeroDivisionError("bad luck in the worker")

    def die(self, rank: int) -> int:
        if self.rank == rank:
            os._exit(3)
        return self.rank

    def hang(self, seconds: float) -> int:
        time.sleep(seconds)
        return self.rank


class BrokenWorker:
    def __init__(self) -> None:
        raise FileNotFoundError("no such env file")


class DiesInWorker(gym.Wrapper):
    """Pendulum that kills its process on the first reset outside the learner (a crashing worker)."""

    def __init__(self) -> None:
        super().__init__(gym.make("Pendulum-v1"))
        self.learner_pid = os.getpid()

    def reset(self, **kwargs):
        if os.getpid() != self.learner_pid:
            os._exit(3)
        return self.env.reset(**kwargs)


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    # The test classes live in this module, which Ray's worker processes cannot import: ship them by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture(params=["process", "ray"])
def backend(request):
    if request.param == "ray":
        request.getfixturevalue("local_ray")
    return request.param


def test_pool_answers_in_worker_order_keeps_worker_state_and_reports_exceptions(backend):
    with make_pool(Echo, [(0,), (1,)], backend, "test") as pool:
        assert pool.call("work", [(2,), (3,)]) == [(0, 4, 1), (1, 9, 1)]
        pool.submit("work", [(4,), (5,)])
        assert pool.gather() == [(0, 16, 2), (1, 25, 2)]
        with pytest.raises(WorkerError, match=r"(?s)test worker 0 .*failed.*ZeroDivisionError: bad luck in the worker"):
            pool.call("fail", [(), ()])


def test_a_worker_that_cannot_start_is_reported_with_its_traceback(backend):
    with pytest.raises(WorkerError, match=r"(?s)test worker 0 .*FileNotFoundError: no such env file"):
        with make_pool(BrokenWorker, [(), ()], backend, "test") as pool:  # Ray reports it here
            pool.call("anything", [(), ()])  # a process at its first answer


def test_a_worker_that_dies_is_reported_not_waited_on(backend):
    start = time.monotonic()
    with make_pool(Echo, [(0,), (1,)], backend, "test", timeout_s=120) as pool:
        assert pool.call("die", [(-1,), (-1,)]) == [0, 1]
        with pytest.raises(WorkerError, match=r"test worker 1 .*died"):
            pool.call("die", [(1,), (1,)])
    assert time.monotonic() - start < 60  # reported when it dies, long before the timeout


def test_a_dead_process_worker_reports_its_exit_code():
    with make_pool(Echo, [(0,)], "process", "test") as pool:
        with pytest.raises(WorkerError, match=r"test worker 0 \(pid \d+\) died with exit code 3"):
            pool.call("die", [(0,)])


def test_a_hung_worker_times_out(backend):
    with make_pool(Echo, [(0,), (1,)], backend, "test", timeout_s=1.5) as pool:
        with pytest.raises(WorkerError, match=r"test worker 1 .*did not answer within 1.5 s.*worker_timeout_s"):
            pool.call("hang", [(0.0,), (60.0,)])


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_ars_learns_through_ray_workers_with_the_process_backends_numbers():
    kwargs = dict(env="CartPole-v1", seed=0, n_directions=4, step_size=0.05, delta_std=0.1)
    runs = {}
    for backend in ("ray", "process"):
        agent = classic_rl.make("ars", n_workers=2, worker_backend=backend, **kwargs)
        before, _ = agent.evaluate(episodes=3)
        agent.learn(total_steps=5000, progress=False)
        runs[backend] = (agent, before, agent.evaluate(episodes=5)[0])
    (ray_agent, before, after), (process_agent, _, process_after) = runs["ray"], runs["process"]
    # the directions are split the same way and each rollout is seeded: the same numbers exactly
    np.testing.assert_array_equal(ray_agent.theta, process_agent.theta)
    np.testing.assert_array_equal(ray_agent.obs_stat.mean, process_agent.obs_stat.mean)
    assert ray_agent.num_timesteps == process_agent.num_timesteps and after == process_after
    assert before < 50 and after > 400, (before, after)  # the zero policy falls at once; 500 is the cap


def test_ars_reports_a_crashed_rollout_worker(backend):
    agent = classic_rl.make("ars", env=DiesInWorker(), n_workers=2, worker_backend=backend, n_directions=2)
    with pytest.raises(WorkerError, match=r"ars worker \d .*died"):
        agent.learn(total_steps=400, progress=False)


@pytest.mark.usefixtures("local_ray")
def test_d4pg_actors_on_ray_give_the_process_backends_numbers():
    kwargs = dict(env="Pendulum-v1", seed=1, n_workers=2, actor_steps=50, hidden=[16], batch_size=32,
                  learning_starts=100, v_min=-400.0, v_max=0.0, n_atoms=11)
    results = {}
    for backend in ("ray", "process"):
        agent = classic_rl.make("d4pg", worker_backend=backend, **kwargs).learn(total_steps=400, progress=False)
        results[backend] = [p.detach().clone() for p in agent.actor.module.parameters()]
    for a, b in zip(results["ray"], results["process"]):
        assert (a == b).all()


def test_old_worker_setting_names_still_work_with_a_warning():
    with pytest.warns(FutureWarning, match="'n_actors' is deprecated, use 'n_workers'"):
        assert classic_rl.make("d4pg", env="Pendulum-v1", n_actors=3).config.n_workers == 3
    with pytest.warns(FutureWarning, match="'num_workers' is deprecated, use 'n_workers'"):
        assert classic_rl.make("a3c", env="CartPole-v1", num_workers=3).config.n_workers == 3
    with pytest.raises(ValueError, match="'num_workers' is the old name of 'n_workers'; give only 'n_workers'"):
        classic_rl.make("a3c", env="CartPole-v1", num_workers=3, n_workers=2)


def test_bad_worker_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="a3c: worker_backend=ray is not supported: .*shared memory"):
        classic_rl.make("a3c", env="CartPole-v1", worker_backend="ray")
    with pytest.raises(ValueError, match="ars: worker_backend must be one of process, ray, got 'dask'"):
        classic_rl.make("ars", env="Pendulum-v1", worker_backend="dask")
    with pytest.raises(ValueError, match="d4pg: worker_backend=ray needs n_workers >= 1"):
        classic_rl.make("d4pg", env="Pendulum-v1", worker_backend="ray", n_workers=0)
    with pytest.raises(ValueError, match="a3c: n_workers must be >= 1"):
        classic_rl.make("a3c", env="CartPole-v1", n_workers=0)


def test_a_cli_run_joins_the_cluster_at_ray_address(local_ray, tmp_path):
    address = local_ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "classic_rl", "train", "ars", "CartPole-v1", "--steps", "400", "--out", str(tmp_path / "run"),
           "--quiet", "--set", "worker_backend=ray", "n_workers=2", "n_directions=2"]
    done = subprocess.run(cmd, env={**os.environ, "RAY_ADDRESS": address}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # the run was a driver (job) of this cluster, not of a Ray it started itself (GCS job table)
    drivers = [job["Entrypoint"] for job in local_ray._private.state.jobs()]
    assert any("classic_rl train ars CartPole-v1" in entry for entry in drivers), drivers
    assert "worker_backend: ray" in (tmp_path / "run" / "config.yaml").read_text()


def test_sigterm_on_a_ray_run_checkpoints_and_the_resume_gives_the_uninterrupted_numbers(local_ray, tmp_path):
    """ray.init installs its own SIGTERM handler; the run must keep ours (stop at a safe point)."""
    args = ["train", "ars", "CartPole-v1", "--steps", "3000", "--seed", "2", "--quiet", "--eval-episodes", "2",
            "--set", "worker_backend=ray", "n_workers=2", "n_directions=2", "step_size=0.05", "delta_std=0.1"]
    run, full = tmp_path / "run", tmp_path / "full"
    proc = subprocess.Popen([sys.executable, "-m", "classic_rl", *args, "--out", str(run), "--save-freq", "100"],
                            env={**os.environ, "RAY_ADDRESS": local_ray.get_runtime_context().gcs_address},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads((run / "state.json").read_text())["num_timesteps"] > 0:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr and "Resume with: classic-rl train ars" in stderr
    state = json.loads((run / "state.json").read_text())
    assert state["run"]["status"] == "interrupted" and 0 < state["num_timesteps"] < 3000

    assert cli_main(["train", "ars", "CartPole-v1", "--resume", str(run), "--quiet", "--eval-episodes", "2"]) == 0
    assert cli_main([*args, "--out", str(full)]) == 0
    a, b = (json.loads((d / "summary.json").read_text()) for d in (run, full))
    assert (a["steps"], a["episodes"], a["eval_return_mean"]) == (b["steps"], b["episodes"], b["eval_return_mean"])
    wa, wb = load_file(str(run / "model.safetensors")), load_file(str(full / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)
