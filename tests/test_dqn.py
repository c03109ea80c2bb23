"""The DQN family: targets, heads, noisy layers, the training loop, learning, saving and resuming."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F

import classic_rl
from classic_rl.agents.dqn import DQN, td_target
from classic_rl.agents.off_policy import linear_schedule
from classic_rl.core.distributional import make_support
from classic_rl.nets import NoisyLinear, QNetwork, dueling_aggregate, flat_parameters
from classic_rl.train import train_run

DQN_NAMES = ["dqn", "double_dqn", "dueling_dqn", "per_dqn", "c51", "noisy_dqn", "rainbow"]

# A small, fast CartPole setting (the tuned defaults in configs/ train for 50k steps).
FAST = dict(hidden=[64, 64], learning_rate=2e-3, batch_size=128, buffer_size=10_000, learning_starts=500,
            train_freq=16, gradient_steps=8, target_update_interval=250, exploration_fraction=0.2,
            exploration_final_eps=0.02)
TINY = dict(hidden=[32, 32], buffer_size=2_000, learning_starts=100, train_freq=8, gradient_steps=2,
            target_update_interval=50, batch_size=32)


# ---------------------------------------------------------------------------------- targets and heads
def test_dqn_target_takes_the_target_nets_max_and_double_dqn_its_value_of_the_online_argmax():
    next_q_target = torch.tensor([[1.0, 5.0], [3.0, 2.0]])
    next_q_online = torch.tensor([[2.0, 1.0], [0.0, 4.0]])
    rewards, discounts = torch.tensor([1.0, 0.0]), torch.tensor([0.9, 0.5])
    torch.testing.assert_close(td_target(rewards, discounts, next_q_target), torch.tensor([1 + 0.9 * 5, 0.5 * 3]))
    # double: a* = argmax online = [0, 1], valued by the target net: [1, 2]
    torch.testing.assert_close(td_target(rewards, discounts, next_q_target, next_q_online),
                               torch.tensor([1 + 0.9 * 1, 0.5 * 2]))
    # terminal transitions (discount 0) keep only the reward
    torch.testing.assert_close(td_target(rewards, torch.zeros(2), next_q_target), rewards)


def test_dueling_aggregation_subtracts_the_mean_advantage():
    value = torch.tensor([[2.0], [-1.0]])
    advantage = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    q = dueling_aggregate(value, advantage)
    torch.testing.assert_close(q, torch.tensor([[1.0, 2.0, 3.0], [-3.0, -3.0, 3.0]]))
    torch.testing.assert_close(q.mean(dim=1, keepdim=True), value)  # V is the mean of Q
    torch.testing.assert_close(dueling_aggregate(value, advantage + 7.0), q)  # A is defined up to a constant


def test_dueling_network_combines_its_value_and_advantage_streams():
    torch.manual_seed(0)
    net = QNetwork((4,), 3, hidden=[16], dueling=True)
    x = torch.randn(5, 4)
    h = torch.relu(net.layers[0](x))
    expected = net.value(h) + net.advantage(h) - net.advantage(h).mean(1, keepdim=True)
    torch.testing.assert_close(net(x), expected)


def test_noisy_layer_resamples_its_noise_and_is_deterministic_in_eval_mode():
    torch.manual_seed(0)
    layer = NoisyLinear(6, 4)
    x = torch.randn(3, 6)
    first = layer(x)
    torch.testing.assert_close(layer(x), first)  # same noise, same output
    layer.reset_noise()
    assert not torch.allclose(layer(x), first)
    layer.eval()
    mean_output = layer(x)
    layer.reset_noise()
    torch.testing.assert_close(layer(x), mean_output)
    torch.testing.assert_close(mean_output, F.linear(x, layer.weight_mu, layer.bias_mu))


def test_flat_parameters_route_gradients_and_updates_through_one_tensor():
    net = QNetwork((4,), 2, hidden=[8])
    flat = flat_parameters(net)
    assert flat.numel() == sum(p.numel() for p in net.parameters())
    net(torch.randn(7, 4)).sum().backward()
    assert flat.grad.abs().sum() > 0
    assert all(p.grad.data_ptr() >= flat.grad.data_ptr() for p in net.parameters())
    before = net.layers[0].weight.detach().clone()
    torch.optim.Adam([flat], lr=0.1).step()
    assert not torch.equal(net.layers[0].weight, before)  # the module sees the flat update


@pytest.mark.parametrize("kwargs", [{}, {"dueling": True}, {"n_atoms": 11, "support": make_support(0, 10, 11)},
                                    {"dueling": True, "n_atoms": 11, "support": make_support(-5, 5, 11),
                                     "noisy": True}])
def test_numpy_acting_path_matches_torch(kwargs):
    torch.manual_seed(0)
    net = QNetwork((4,), 3, hidden=[16, 16], **kwargs)
    flat_parameters(net)
    obs = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    net.eval()  # noisy layers: the default numpy path is the mean-weight (eval) output
    with torch.no_grad():
        expected = net.q_values(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(net.q_values_numpy(obs), expected, rtol=1e-5, atol=1e-5)
    net.train()  # with the current noise applied
    with torch.no_grad():
        expected = net.q_values(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(net.q_values_numpy(obs, net.noisy_params_numpy()), expected, rtol=1e-5, atol=1e-5)


def test_epsilon_decays_linearly_then_stays_at_its_final_value():
    assert linear_schedule(1.0, 0.1, 0.5, 0, 1000) == 1.0
    assert linear_schedule(1.0, 0.1, 0.5, 250, 1000) == pytest.approx(0.55)
    assert linear_schedule(1.0, 0.1, 0.5, 900, 1000) == pytest.approx(0.1)


# ---------------------------------------------------------------------------------- the loop
def test_time_limit_truncation_bootstraps_from_the_real_final_observation():
    agent = DQN("CartPole-v1", seed=0, env_kwargs={"max_episode_steps": 5}, learning_starts=10_000)
    agent.learn(total_steps=40, progress=False)
    buf = agent.buffer
    ends = np.arange(4, 40, 5)  # every 5th step is cut by the time limit (random play needs > 5 to fall)
    np.testing.assert_allclose(buf.discounts[ends], 0.99, rtol=1e-6)
    assert not np.allclose(buf.next_obs[ends[:-1]], buf.obs[ends[:-1] + 1])  # next episode's reset obs differs
    inside = np.setdiff1d(np.arange(39), ends)
    np.testing.assert_array_equal(buf.next_obs[inside], buf.obs[inside + 1])
    assert agent.num_episodes == 8


def test_several_environments_step_together():
    agent = DQN("CartPole-v1", seed=0, n_envs=3, **TINY)
    agent.learn(total_steps=300, progress=False)
    assert agent.num_timesteps == 300 and len(agent.buffer) == 300 and agent.n_updates > 0


def test_continuous_actions_get_a_clear_error():
    for name in ("dqn", "rainbow"):
        with pytest.raises(ValueError, match="DQN needs a discrete action space"):
            classic_rl.make(name, "Pendulum-v1")


def test_bad_settings_name_the_field_and_the_valid_values():
    with pytest.raises(ValueError, match="replay must be one of uniform, proportional, rank"):
        classic_rl.make("dqn", "CartPole-v1", replay="prioritised")
    with pytest.raises(ValueError, match="loss must be one of huber, mse"):
        classic_rl.make("dqn", "CartPole-v1", loss="l1")
    with pytest.raises(ValueError, match="v_max"):
        classic_rl.make("c51", "CartPole-v1", v_min=5.0, v_max=0.0)


def test_every_variant_is_registered_with_its_components():
    algos = classic_rl.ALGORITHMS
    assert set(DQN_NAMES) <= set(algos)
    rainbow = classic_rl.make("rainbow", "CartPole-v1").config
    assert (rainbow.double, rainbow.dueling, rainbow.replay, rainbow.distributional, rainbow.noisy,
            rainbow.n_step) == (True, True, "proportional", True, True, 3)
    cartpole = classic_rl.make("dqn", "CartPole-v1").config  # tuned defaults picked by env id
    assert (cartpole.learning_rate, cartpole.train_freq, cartpole.hidden) == (2.3e-3, 256, [256, 256])


# ---------------------------------------------------------------------------------- learning
@pytest.mark.slow
@pytest.mark.parametrize("name", DQN_NAMES)
def test_each_variant_learns_cartpole_well_beyond_a_random_policy(name):
    # random play scores about 22; every variant reaches > 80 (most > 150) in 4k steps
    extra = {"gradient_steps": 4} if name == "rainbow" else {}  # the costliest update: fewer of them
    agent = classic_rl.make(name, "CartPole-v1", seed=0, **{**FAST, **extra})
    agent.learn(total_steps=4_000, progress=False)
    mean, _ = agent.evaluate(episodes=10, seed=1_000)
    assert mean > 80, f"{name}: greedy return {mean:.1f} after 4k steps"


# ---------------------------------------------------------------------------------- save / resume
@pytest.mark.parametrize("name", ["dqn", "rainbow"])
def test_save_load_round_trip_gives_the_same_actions(name, tmp_path):
    agent = classic_rl.make(name, "CartPole-v1", seed=3, **TINY)
    agent.learn(total_steps=400, progress=False)
    agent.save(tmp_path / "agent")
    loaded = classic_rl.load(tmp_path / "agent")
    assert type(loaded) is type(agent)
    obs = np.random.default_rng(0).normal(scale=0.5, size=(50, 4)).astype(np.float32)
    assert [agent.act(o) for o in obs] == [loaded.act(o) for o in obs]
    assert loaded.num_timesteps == 400 and len(loaded.buffer) == len(agent.buffer)


@pytest.mark.parametrize("name", ["dqn", "rainbow"])
def test_resuming_an_interrupted_run_equals_an_uninterrupted_one(name, tmp_path, ctrl_c_at_step):
    settings = dict(TINY, learning_starts=50)
    full, _ = train_run(name, "CartPole-v1", steps=600, seed=5, overrides=settings, out=tmp_path / "full",
                        quiet=True, eval_episodes=0)

    undo = ctrl_c_at_step(300)
    half, summary = train_run(name, "CartPole-v1", steps=600, seed=5, overrides=settings, out=tmp_path / "half",
                              quiet=True, eval_episodes=0)
    undo()
    assert summary["interrupted"] and half.num_timesteps == 300
    assert len(half.runner.actions[0]) > 0  # stopped mid-episode: loading rebuilds the env state

    resumed, summary = train_run(name, "CartPole-v1", steps=600, resume=tmp_path / "half", quiet=True,
                                 eval_episodes=0)
    assert summary["steps"] == 600 and resumed.num_episodes == full.num_episodes
    for key, value in full.state_tensors().items():
        torch.testing.assert_close(resumed.state_tensors()[key], value, rtol=0, atol=0, msg=key)
    np.testing.assert_array_equal(resumed.buffer.obs, full.buffer.obs)
