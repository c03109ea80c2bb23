"""``vec_env=envpool``: EnvPool's CartPole steps like gymnasium's from the same states, the adapter
hands the collector gymnasium's same-step autoreset (no reset transitions, truncations bootstrapped
from the final observation, exactly as on the ``sync`` path), PPO trains through it, and a missing
EnvPool or an env it lacks is a one-line error."""

import sys

import numpy as np
import pytest
import torch

from classic_rl.agents.ppo import PPO
from classic_rl.cli import main
from classic_rl.env_utils import make_vector_env

SKIP_REASON = 'EnvPool is optional (pip install "rl-course-toolkit[envpool]"); its tests need it installed'


@pytest.fixture
def envpool():
    # any ImportError skips: a wheel that installs but does not load here (numpy ABI) as well as none at all
    return pytest.importorskip("envpool", reason=SKIP_REASON, exc_type=ImportError)


def test_envpool_cartpole_steps_like_gymnasium_from_the_same_states(envpool):
    """Each episode of gymnasium's copy starts from EnvPool's first observation (EnvPool seeds its own
    episodes); then the same actions give the same observations, rewards, ends and final observations."""
    n, limit = 3, {"max_episode_steps": 15}
    pool = make_vector_env("CartPole-v1", n, limit, "envpool")
    reference = make_vector_env("CartPole-v1", n, limit, "sync")
    obs, _ = pool.reset(seed=3)
    reference.reset(seed=0)

    def start_reference_at(rows, first_obs):
        for i in rows:  # CartPole's observation is its whole state
            reference.envs[i].unwrapped.state = first_obs[i].astype(np.float64)

    start_reference_at(range(n), obs)
    rng = np.random.default_rng(0)
    ends = {"terminated": 0, "truncated": 0}
    for _ in range(300):
        actions = rng.integers(0, 2, size=n)
        obs, rewards, terminated, truncated, info = pool.step(actions)
        ref_obs, ref_rewards, ref_terminated, ref_truncated, ref_info = reference.step(actions)
        # One difference: an episode that terminates on its time limit's last step is truncated alone in
        # EnvPool (its gymnasium API reports terminated = done and not truncated), both in gymnasium
        both = ref_terminated & ref_truncated
        np.testing.assert_array_equal(terminated, ref_terminated & ~both)
        np.testing.assert_array_equal(truncated, ref_truncated)
        np.testing.assert_allclose(rewards, ref_rewards)
        ended = terminated | truncated
        for i in range(n):
            if ended[i]:  # same-step autoreset: the finished episode's last observation in the info
                np.testing.assert_allclose(info["final_obs"][i], ref_info["final_obs"][i], atol=1e-5)
                assert not np.allclose(obs[i], info["final_obs"][i])  # obs is already the next episode's
            else:
                np.testing.assert_allclose(obs[i], ref_obs[i], atol=1e-5)
        start_reference_at(np.flatnonzero(ended), obs)
        ends["terminated"] += int(terminated.sum())
        ends["truncated"] += int(truncated.sum())
    assert ends["terminated"] > 10 and ends["truncated"] > 10  # both kinds of end were compared
    pool.close()
    reference.close()


@pytest.mark.parametrize("vec_env", ["sync", "envpool"])
def test_rollouts_hold_only_real_steps_and_bootstrap_truncations_from_the_final_obs(vec_env, monkeypatch, request):
    if vec_env == "envpool":
        request.getfixturevalue("envpool")
    agent = PPO("CartPole-v1", seed=0, vec_env=vec_env, num_envs=3, n_steps=60, batch_size=60,
                env_kwargs={"max_episode_steps": 20})
    agent.collector = agent.make_collector()
    finals = []  # (step, env, final obs) of every truncated episode, as the vector env reported them
    step = agent.collector.envs.step

    def recording_step(actions):
        out = step(actions)
        for i in np.flatnonzero(out[3] & ~out[2]):
            finals.append((len(recording_step.calls), int(i), np.array(out[4]["final_obs"][i])))
        recording_step.calls.append(1)
        return out

    recording_step.calls = []
    monkeypatch.setattr(agent.collector.envs, "step", recording_step)
    rollout = agent.collector.collect(60)
    assert not rollout.masked and bool(rollout.mask.all())  # no reset step to mask: every row is a transition
    assert rollout.num_episodes == int(rollout.episode_end.sum()) > 0
    assert len(finals) >= 3 and rollout.episode_end.sum() > len(finals)  # truncations and terminations
    with torch.no_grad():
        for t, i, final_obs in finals:
            expected = agent.policy.value(torch.as_tensor(final_obs[None], dtype=torch.float32))[0]
            assert rollout.next_values[i, t] == pytest.approx(float(expected), abs=1e-5)
    continuing = rollout.episode_end[:, :-1] == 0
    torch.testing.assert_close(rollout.next_values[:, :-1][continuing], rollout.values[:, 1:][continuing])
    assert torch.all(rollout.next_values[rollout.terminated.bool()] == 0)
    agent.close()


@pytest.mark.slow
def test_ppo_learns_cartpole_through_envpool(envpool):
    agent = PPO("CartPole-v1", seed=0, vec_env="envpool")  # tuned settings from configs/classic/ppo.yaml
    agent.learn(total_steps=10_000, progress=False)
    assert agent.evaluate(episodes=5, seed=1000)[0] > 100  # random play: ~22
    agent.close()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_envpool_not_installed_is_a_one_line_error_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "envpool", None)  # import envpool now raises ImportError
    out = tmp_path / "run"
    argv = ["train", "ppo", "CartPole-v1", "--steps", "64", "--set", "vec_env=envpool", "--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert "vec_env=envpool" in err and 'pip install "rl-course-toolkit[envpool]"' in err
    assert not out.exists()  # refused before the run directory was made


def test_an_env_envpool_lacks_is_a_one_line_error_naming_it(envpool, tmp_path, capsys):
    argv = ["train", "ppo", "GridWorld4x3-v0", "--steps", "64", "--set", "vec_env=envpool", "--out",
            str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert "EnvPool has no environment 'GridWorld4x3-v0'" in err and "vec_env=sync" in err


def test_off_policy_agents_do_not_take_envpool():
    import classic_rl

    with pytest.raises(ValueError, match="vec_env must be one of none, sync, async; got 'envpool'"):
        classic_rl.make("dqn", "CartPole-v1", vec_env="envpool")


def test_a_resumed_envpool_run_continues_on_fresh_episodes_with_a_warning(envpool):
    settings = dict(seed=0, vec_env="envpool", num_envs=2, n_steps=16, batch_size=32)
    agent = PPO("CartPole-v1", **settings).learn(64, progress=False)
    resumed = PPO("CartPole-v1", **settings)
    resumed.load_training_state(agent.training_state())
    with pytest.warns(RuntimeWarning, match="EnvPool's environments cannot replay an episode"):
        resumed.learn(64, progress=False)
    assert resumed.collector.total_steps == 128  # the collector's counters were taken over
    agent.close()
    resumed.close()
