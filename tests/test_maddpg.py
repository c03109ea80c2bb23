"""MADDPG: centralised critics, decentralised actors, the env naming scheme and learning on simple_spread."""

import numpy as np
import pytest
import torch

import classic_rl
from classic_rl.agents.continuous import GroupedMLP
from classic_rl.agents.maddpg import MADDPG, make_multiagent_env
from classic_rl.evaluation import evaluate
from classic_rl.train import train_run


def test_critics_see_every_agent_and_actors_only_their_own_observation():
    # simple_adversary: the adversary observes 8 numbers, the two good agents 10; all have 5 actions.
    agent = MADDPG("mpe2:simple_adversary_v3", seed=0, batch_size=8, learning_starts=8, buffer_size=100)
    assert agent.obs_dims == [8, 10, 10]
    assert agent.critic_input_dim == 8 + 10 + 10 + 3 * 5
    assert agent.critics.w0.shape == (3, 43, 64)  # one critic per agent, each over the joint input

    agent.learn(total_steps=20, progress=False)
    batch = agent.buffer.sample(8)
    assert batch.obs.shape == (8, 28) and batch.actions.shape == (8, 15) and batch.rewards.shape == (8, 3)
    assert agent.critics(agent.critic_input(batch.obs, batch.actions)).shape == (3, 8, 1)

    obs, _ = agent.env.reset(seed=1)
    base = agent._action_vectors(agent._joint_obs(obs), explore=False)
    changed = dict(obs, agent_0=obs["agent_0"] + 5.0)
    moved = agent._action_vectors(agent._joint_obs(changed), explore=False)
    np.testing.assert_array_equal(base[:5], moved[:5])  # the adversary's actor ignores agent_0's view
    joint, joint_changed = (torch.as_tensor(agent._joint_obs(o))[None] for o in (obs, changed))
    acts = torch.as_tensor(base)[None]
    q = agent.critics(agent.critic_input(joint, acts))
    q_changed = agent.critics(agent.critic_input(joint_changed, acts))
    assert not torch.allclose(q[0], q_changed[0])  # ... but the adversary's critic sees it


def test_grouped_mlp_members_are_independent_networks():
    torch.manual_seed(0)
    net = GroupedMLP(3, 4, [8], 2)
    x = torch.randn(5, 4)
    out = net(x)
    member = torch.relu(x @ net.w0[1] + net.b0[1]) @ net.w1[1] + net.b1[1]
    torch.testing.assert_close(out[1], member)
    out[0].sum().backward()
    assert net.w0.grad[1:].abs().sum() == 0 and net.w0.grad[0].abs().sum() > 0
    np.testing.assert_allclose(net.forward_numpy(np.tile(x[:1].numpy(), (3, 1))), out[:, 0].detach().numpy(),
                               rtol=1e-5, atol=1e-6)


def test_unknown_multiagent_env_names_the_valid_ones():
    with pytest.raises(ValueError, match="simple_spread_v3"):
        make_multiagent_env("mpe2:simple_sprad_v3")
    with pytest.raises(ValueError, match="MODULE:NAME"):
        make_multiagent_env("simple_spread_v3")


def test_train_run_writes_a_run_directory_for_a_multiagent_env(tmp_path):
    agent, summary = train_run(
        "maddpg", "mpe2:simple_spread_v3", steps=100, out=tmp_path / "run", quiet=True, eval_episodes=2,
        env_kwargs={"N": 2}, overrides={"batch_size": 16, "learning_starts": 50, "train_freq": 10},
    )
    assert summary["env"] == "mpe2:simple_spread_v3" and summary["steps"] == 100
    assert np.isfinite(summary["eval_return_mean"])
    loaded = classic_rl.load(tmp_path / "run")
    obs, _ = make_multiagent_env("mpe2:simple_spread_v3", {"N": 2}).reset(seed=3)
    assert loaded.act(obs) == agent.act(obs)
    assert len(loaded.buffer) == 100


class RandomAgents:
    def __init__(self, env, seed):
        self.space = env.action_space
        self.space.seed(seed)

    def act(self, obs, deterministic=True):
        return self.space.sample()


@pytest.mark.slow
def test_maddpg_beats_random_agents_on_simple_spread():
    env_kwargs = {"N": 2}
    agent = MADDPG("mpe2:simple_spread_v3", seed=0, env_kwargs=env_kwargs, batch_size=256, learning_starts=250,
                   train_freq=10, tau=0.05)
    agent.learn(total_steps=2000, progress=False)
    trained, _ = agent.evaluate(episodes=20, seed=1000)
    env = make_multiagent_env("mpe2:simple_spread_v3", env_kwargs)
    random, _ = evaluate(RandomAgents(env, seed=0), env, episodes=20, seed=1000)
    # Team return (sum over agents, 25 steps): random play about -43, trained about -29.
    assert trained > random + 6.0, (trained, random)


def test_same_seed_same_numbers():
    kwargs = dict(seed=7, env_kwargs={"N": 2}, batch_size=16, learning_starts=40, train_freq=5, buffer_size=500)
    a = MADDPG("mpe2:simple_spread_v3", **kwargs).learn(total_steps=120, progress=False)
    b = MADDPG("mpe2:simple_spread_v3", **kwargs).learn(total_steps=120, progress=False)
    for p, q in zip(a.critics.parameters(), b.critics.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
