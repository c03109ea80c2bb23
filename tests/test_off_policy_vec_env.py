"""Off-policy agents on gymnasium vector envs (vec_env='sync'/'async'): the same transitions as the
default runner, exact resume, real final observations at time limits, and a clear error for bad values."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import classic_rl
from classic_rl.collectors import EnvRunner, VectorEnvRunner

# learning_starts < steps: the runs act at random first, then epsilon-greedy from the network.
TINY = dict(hidden=[32, 32], buffer_size=2_000, learning_starts=100, train_freq=8, gradient_steps=2,
            target_update_interval=50, batch_size=32)
REPLAY_FIELDS = ("obs", "actions", "rewards", "next_obs", "discounts")


def make_agent(vec_env: str, n_envs: int = 3, seed: int = 1, **overrides):
    return classic_rl.make("dqn", "CartPole-v1", seed=seed, vec_env=vec_env, n_envs=n_envs, **TINY, **overrides)


def assert_same_training(agent, reference):
    for field in REPLAY_FIELDS:
        np.testing.assert_array_equal(getattr(agent.buffer, field), getattr(reference.buffer, field), err_msg=field)
    for key, value in reference.state_tensors().items():
        torch.testing.assert_close(agent.state_tensors()[key], value, rtol=0, atol=0, msg=key)
    assert agent.num_episodes == reference.num_episodes


def test_sync_vector_env_stores_the_same_transitions_as_the_default_runner():
    default = make_agent("none").learn(total_steps=450, progress=False)
    vectorised = make_agent("sync").learn(total_steps=450, progress=False)
    assert isinstance(default.runner, EnvRunner) and not isinstance(default.runner, VectorEnvRunner)
    assert isinstance(vectorised.runner, VectorEnvRunner)
    assert default.num_episodes > 10  # many episode ends (resets) inside the compared run
    assert_same_training(vectorised, default)
    assert vectorised.runner.seeds == default.runner.seeds
    assert vectorised.runner.lengths == default.runner.lengths  # DDPG restarts its OU noise from these
    vectorised.close()


@pytest.mark.parametrize("algo, env, extra", [
    ("ddpg", "Pendulum-v1", dict(noise_type="ornstein-uhlenbeck")),  # OU noise restarts on runner.lengths == 0
    ("sac", "Pendulum-v1", {}),
    ("sac_discrete", "CartPole-v1", {}),
])
def test_actor_critic_agents_train_the_same_on_a_sync_vector_env(algo, env, extra):
    runs = [classic_rl.make(algo, env, seed=1, vec_env=vec_env, n_envs=2, hidden=[32, 32], batch_size=32,
                            learning_starts=50, buffer_size=1000, env_kwargs={"max_episode_steps": 20}, **extra)
            .learn(total_steps=160, progress=False) for vec_env in ("none", "sync")]
    assert runs[0].num_episodes == 8  # episodes of 20 steps: the noise and the envs restart within the run
    assert_same_training(runs[1], runs[0])


@pytest.mark.parametrize("vec_env, n_envs", [("sync", 3), ("async", 2)])
def test_resuming_from_a_save_equals_an_uninterrupted_run(vec_env, n_envs, tmp_path):
    straight = make_agent(vec_env, n_envs).learn(total_steps=420, progress=False)
    first = make_agent(vec_env, n_envs).learn(total_steps=240, progress=False)
    assert all(len(a) > 0 for a in first.runner.actions)  # saved mid-episode: loading must replay them
    first.save(tmp_path / "agent")
    resumed = classic_rl.load(tmp_path / "agent")
    assert resumed.runner.lengths == first.runner.lengths and resumed.runner.returns == first.runner.returns
    np.testing.assert_array_equal(resumed.runner.obs, first.runner.obs)
    resumed.learn(total_steps=180, progress=False)
    assert_same_training(resumed, straight)
    for agent in (straight, first, resumed):
        agent.close()


def test_async_vector_env_matches_the_default_runner():
    default = make_agent("none", n_envs=2).learn(total_steps=200, progress=False)
    parallel = make_agent("async", n_envs=2).learn(total_steps=200, progress=False)
    assert_same_training(parallel, default)
    parallel.close()
    assert parallel.runner.vec.closed


def test_time_limit_truncation_stores_the_real_final_observation():
    horizon, n_envs = 5, 3
    agent = classic_rl.make("dqn", "CartPole-v1", seed=2, vec_env="sync", n_envs=n_envs,
                            env_kwargs={"max_episode_steps": horizon}, **dict(TINY, learning_starts=1000))
    steps = 8 * horizon
    agent.learn(total_steps=steps * n_envs, progress=False)
    buf = agent.buffer
    obs, actions, next_obs = (getattr(buf, f)[: steps * n_envs].reshape(steps, n_envs, -1) for f in
                              ("obs", "actions", "next_obs"))
    discounts = buf.discounts[: steps * n_envs].reshape(steps, n_envs)
    # Every stored transition follows CartPole's dynamics, the truncated last step included.
    physics = gym.make("CartPole-v1").unwrapped
    physics.reset(seed=0)
    for t in range(steps):
        for i in range(n_envs):
            physics.state = obs[t, i].astype(np.float64)
            expected, *_ = physics.step(int(actions[t, i, 0]))
            np.testing.assert_allclose(next_obs[t, i], expected, atol=1e-5, err_msg=f"step {t} env {i}")
    # Episodes were cut every `horizon` steps and still bootstrap (a time limit is not a terminal state).
    ends = np.arange(horizon - 1, steps - 1, horizon)
    assert not np.allclose(next_obs[ends], obs[ends + 1])  # a new episode (reset) starts after each
    np.testing.assert_array_equal(next_obs[:-1][np.setdiff1d(np.arange(steps - 1), ends)],
                                  obs[1:][np.setdiff1d(np.arange(steps - 1), ends)])
    np.testing.assert_allclose(discounts, agent.config.gamma)
    assert agent.num_episodes == steps // horizon * n_envs
    agent.close()


def test_unknown_vec_env_is_a_clear_error():
    with pytest.raises(ValueError, match=r"vec_env must be one of none, sync, async; got 'threads'"):
        make_agent("threads")


def test_an_env_instance_runs_as_one_vector_copy_and_asks_for_an_id_for_more():
    env = gym.make("CartPole-v1")
    agent = classic_rl.make("dqn", env, vec_env="sync", n_envs=1, **TINY).learn(total_steps=50, progress=False)
    assert agent.runner.vec.num_envs == 1 and agent.num_timesteps == 50
    with pytest.raises(ValueError, match="pass an env id"):
        classic_rl.make("dqn", gym.make("CartPole-v1"), vec_env="async", n_envs=2, **TINY)
