"""The shared rollout collector (autoreset, final-obs bootstrap, masks, normalisers) and the
REINFORCE / actor-critic / A2C agents."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from classic_rl.agents.actor_critic import A2C, ActorCriticAgent
from classic_rl.agents.on_policy import compute_gae, make_vector_env
from classic_rl.agents.reinforce import Reinforce
from classic_rl.collectors import RolloutCollector
from classic_rl.core.ppo import gae
from classic_rl.normalizers import RewardScaler, RunningMeanStd


class CountEnv(gym.Env):
    """obs = [steps taken so far], reward 1 per step; terminates after ``end_at`` steps if set."""

    def __init__(self, end_at: int | None = None) -> None:
        self.observation_space = gym.spaces.Box(0.0, 100.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.end_at = end_at
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        terminated = self.end_at is not None and self.t >= self.end_at
        return np.array([float(self.t)], np.float32), 1.0, terminated, False, {}


class LinearValueActor:
    """A stand-in numpy actor: uniform actions, V(obs) = 10 * obs + 1."""

    def value(self, obs):
        return 10.0 * obs[:, 0] + 1.0

    def act(self, obs, rng):
        raw = rng.integers(0, 2, obs.shape[0])
        return raw, np.full(obs.shape[0], np.log(0.5), np.float32), self.value(obs)

    def to_env(self, raw):
        return raw.tolist()


class LinearValuePolicy:
    """What the collector needs from a policy: a numpy actor of its current weights."""

    def numpy_actor(self):
        return LinearValueActor()


def _count_envs():
    """env 0 terminates after 3 steps; env 1 is truncated by a time limit after 2 steps."""
    fns = [lambda: CountEnv(end_at=3), lambda: gym.wrappers.TimeLimit(CountEnv(), max_episode_steps=2)]
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def test_collector_bootstraps_truncation_from_the_final_observation_and_not_termination():
    collector = RolloutCollector(_count_envs(), LinearValuePolicy(), seed=0)
    r = collector.collect(n_steps=4)
    V = lambda x: 10.0 * x + 1.0  # noqa: E731
    # obs seen per step: env 0: 0,1,2,(end) 0 ; env 1: 0,1,(truncated) 0,1
    assert r.obs[:, :, 0].tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]
    assert r.terminated.tolist() == [[0, 0, 1, 0], [0, 0, 0, 0]]
    assert r.episode_end.tolist() == [[0, 0, 1, 0], [0, 1, 0, 1]]
    # next values: the next row's value, V(final obs = 2) at the truncation (not V(reset obs = 0)),
    # 0 after the termination, V(obs after the last step) in the last column
    expected_next = [[V(1), V(2), 0.0, V(1)], [V(1), V(2), V(1), V(2)]]
    assert torch.allclose(r.next_values, torch.tensor(expected_next))
    assert torch.equal(r.mask, torch.ones(2, 4)) and not r.masked and r.loss_mask is None
    assert r.num_steps == 8 and r.num_episodes == 3

    gamma, lam = 0.9, 0.8
    adv, ret = compute_gae(r, gamma, lam)
    # reference: GAE written out for env 1, whose truncation must use V(final obs) = 21
    values, rewards = [V(0), V(1), V(0), V(1)], [1.0] * 4
    nxt, ends = [V(1), V(2), V(1), V(2)], [0, 1, 0, 1]
    expected, running = [0.0] * 4, 0.0
    for t in reversed(range(4)):
        delta = rewards[t] + gamma * nxt[t] - values[t]
        running = delta + gamma * lam * (1 - ends[t]) * running
        expected[t] = running
    assert torch.allclose(adv[1], torch.tensor(expected))
    assert torch.allclose(ret, adv + r.values)
    # the termination of env 0 contributes no bootstrap: delta at t=2 is r - V(2)
    assert float(adv[0, 2]) == pytest.approx(1.0 - V(2))


def test_collect_complete_episodes_masks_the_unfinished_tail():
    collector = RolloutCollector(_count_envs(), LinearValuePolicy(), seed=0)
    r = collector.collect(n_episodes=3)
    # env 1 ends after steps 2 and 4, env 0 after step 3: the third end comes with step 4,
    # when env 0 is one step into a new episode that cannot be used
    assert r.obs.shape[1] == 4 and r.num_episodes == 3
    assert r.mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]] and r.masked
    zeros = torch.zeros(2, 4)
    adv, _ = gae(
        r.rewards,
        zeros,
        mask=r.mask,
        next_values=zeros,
        terminated=r.terminated,
        episode_end=r.episode_end,
        gamma=1.0,
        lam=1.0,
    )
    assert adv.tolist() == [[3, 2, 1, 0], [2, 1, 2, 1]]  # Monte-Carlo returns-to-go, tail masked
    # the next collection starts from fresh episodes (env 1 was cut mid-episode)
    r2 = collector.collect(n_episodes=1)
    assert r2.obs[:, 0, 0].tolist() == [0.0, 0.0]


def test_make_vector_env_uses_same_step_autoreset():
    envs = make_vector_env("CartPole-v1", 2)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    envs.close()


def test_running_mean_std_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(300, 2))
    rms = RunningMeanStd((2,), epsilon=0.0)
    for chunk in np.split(data, [7, 100, 101]):
        rms.update(chunk)
    assert np.allclose(rms.mean, data.mean(0)) and np.allclose(rms.var, data.var(0))


def test_reward_scaler_divides_by_the_discounted_return_std():
    scaler = RewardScaler(num_envs=1, gamma=0.0, clip=100.0)  # gamma 0: the return is the reward
    rewards = np.array([2.0, 4.0, 6.0, 8.0])
    for r in rewards:
        out = scaler(np.array([r]), np.array([False]))
    assert float(out[0]) == pytest.approx(8.0 / np.sqrt(scaler.rms.var + 1e-8))
    assert scaler.rms.var == pytest.approx(rewards.var(), rel=1e-3)


def _learn_and_eval(agent, steps):
    agent.learn(total_steps=steps, progress=False)
    return agent.evaluate(episodes=5, seed=1000)[0]


@pytest.mark.slow
def test_reinforce_with_baseline_beats_random_on_cartpole():
    agent = Reinforce("CartPole-v1", seed=0)
    assert _learn_and_eval(agent, 10_000) > 100  # random play: ~22


@pytest.mark.slow
def test_actor_critic_beats_random_on_cartpole():
    agent = ActorCriticAgent("CartPole-v1", seed=0)
    assert _learn_and_eval(agent, 10_000) > 100


@pytest.mark.slow
def test_a2c_beats_random_on_cartpole():
    agent = A2C("CartPole-v1", seed=0)
    assert _learn_and_eval(agent, 15_000) > 100


def test_a2c_continuous_tanh_squashed_runs_on_pendulum():
    agent = A2C("Pendulum-v1", seed=0, action_bound="tanh", normalize_obs=True, num_envs=4, n_steps=8)
    agent.learn(total_steps=1_000, progress=False)
    action = agent.act(np.zeros(3, np.float32))
    assert action.shape == (1,) and -2.0 <= float(action[0]) <= 2.0
    assert all(torch.isfinite(p).all() for p in agent.policy.parameters())


def test_same_seed_gives_the_same_parameters():
    a, b = (A2C("CartPole-v1", seed=3, num_envs=2).learn(total_steps=400, progress=False) for _ in range(2))
    for pa, pb in zip(a.policy.parameters(), b.policy.parameters()):
        assert torch.equal(pa, pb)


def test_bad_on_policy_settings_raise_with_the_valid_choices():
    with pytest.raises(ValueError, match="sync, async"):
        A2C("CartPole-v1", vec_env="threads")
    with pytest.raises(ValueError, match="adam, rmsprop"):
        A2C("CartPole-v1", optimizer="sgd")
    with pytest.raises(ValueError, match="Box observation"):
        A2C("FrozenLake-v1", normalize_obs=True)
