"""The PPO agent: it runs on the shared core, learns discrete and continuous tasks, anneals,
normalises, stops early on KL, and saves/loads exactly."""

import numpy as np
import pytest
import torch

import classic_rl.agents.on_policy as on_policy
import classic_rl.agents.ppo as ppo_module
from classic_rl.agents.base import Agent
from classic_rl.agents.ppo import PPO


def test_ppo_trains_through_the_shared_core(monkeypatch):
    calls = {"gae": 0, "clipped_surrogate": 0}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(on_policy, "gae", spy("gae", on_policy.gae))
    monkeypatch.setattr(ppo_module, "clipped_surrogate", spy("clipped_surrogate", ppo_module.clipped_surrogate))
    PPO("CartPole-v1", seed=0, num_envs=2, n_steps=16, batch_size=16, n_epochs=1).learn(64, progress=False)
    # 2 updates of 32 transitions, each 1 epoch of 2 minibatches of 16
    assert calls == {"gae": 2, "clipped_surrogate": 4}


@pytest.mark.slow
def test_ppo_beats_random_on_cartpole():
    agent = PPO("CartPole-v1", seed=0)  # tuned settings from configs/classic/ppo.yaml
    agent.learn(total_steps=10_000, progress=False)
    assert agent.evaluate(episodes=5, seed=1000)[0] > 100  # random play: ~22


@pytest.mark.slow
def test_ppo_improves_pendulum():
    # settings that learn fast (large steps, normalised inputs and rewards, a narrow initial std)
    fast = dict(
        num_envs=8,
        n_steps=128,
        batch_size=128,
        learning_rate=3e-3,
        gae_lambda=0.9,
        normalize_obs=True,
        normalize_reward=True,
        log_std_init=-0.5,
    )
    agent = PPO("Pendulum-v1", seed=0, **fast)
    before = agent.evaluate(episodes=5, seed=1000)[0]
    agent.learn(total_steps=20_000, progress=False)
    after = agent.evaluate(episodes=5, seed=1000)[0]
    assert before < -1000 and after > -900  # random play: ~ -1200


@pytest.mark.slow
def test_learning_rate_and_clip_range_anneal_linearly():
    agent = PPO(
        "CartPole-v1",
        seed=0,
        num_envs=2,
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        learning_rate=1e-3,
        anneal_lr=True,
        anneal_clip=True,
    )
    seen = []
    original = agent.update
    agent.update = lambda rollout, remaining: (
        seen.append(original(rollout, remaining)["policy/clip_range"]) or {}
    )
    agent.learn(
        total_steps=256, progress=False
    )  # 4 rollouts of 64 steps: 1, 0.75, 0.5, 0.25 of the budget left
    assert seen == pytest.approx([0.2, 0.15, 0.1, 0.05])
    assert agent.optimizers()["optimizer"].param_groups[0]["lr"] == pytest.approx(0.25e-3)


def test_target_kl_stops_the_epochs_early():
    agent = PPO(
        "CartPole-v1",
        seed=0,
        num_envs=2,
        n_steps=64,
        batch_size=32,
        n_epochs=10,
        learning_rate=0.05,
        target_kl=1e-6,
    )
    agent.collector = agent.make_collector()
    stats = agent.update(agent.collector.collect(64), 1.0)
    assert stats["epochs_run"] == 1.0


def test_save_load_round_trip_gives_identical_actions(tmp_path):
    agent = PPO(
        "Pendulum-v1",
        seed=0,
        num_envs=2,
        n_steps=64,
        batch_size=64,
        normalize_obs=True,
        normalize_reward=True,
        state_dependent_std=True,
        action_bound="tanh",
    )
    agent.learn(total_steps=256, progress=False)
    agent.save(tmp_path / "ppo")
    loaded = Agent.load(tmp_path / "ppo")
    assert isinstance(loaded, PPO)
    assert (
        np.allclose(loaded.obs_rms.mean, agent.obs_rms.mean) and loaded.obs_rms.count == agent.obs_rms.count
    )
    assert loaded.reward_scaler.rms.var == pytest.approx(agent.reward_scaler.rms.var)
    obs = np.random.default_rng(0).uniform(-1, 1, size=(20, 3)).astype(np.float32)
    assert np.array_equal(loaded.act(obs), agent.act(obs))
    assert np.array_equal(loaded.act(obs[0]), agent.act(obs[0]))
    torch.manual_seed(5)
    sampled = agent.act(obs, deterministic=False)
    torch.manual_seed(5)
    assert np.array_equal(loaded.act(obs, deterministic=False), sampled)
    # the loaded agent keeps training from where the saved one stopped
    loaded.learn(total_steps=128, progress=False)
    assert loaded.num_timesteps == 384


def test_discrete_save_load_round_trip(tmp_path):
    agent = PPO("CartPole-v1", seed=1, num_envs=2, n_steps=32, batch_size=32).learn(128, progress=False)
    loaded = Agent.load(agent.save(tmp_path / "cp"))
    obs = np.random.default_rng(1).normal(size=(30, 4)).astype(np.float32)
    assert np.array_equal(loaded.act(obs), agent.act(obs))
    assert isinstance(loaded.act(obs[0]), int)


def test_batch_size_larger_than_the_rollout_is_rejected():
    with pytest.raises(ValueError, match="batch_size"):
        PPO("CartPole-v1", num_envs=2, n_steps=8, batch_size=64)
