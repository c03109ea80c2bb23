"""DDPG / TD3 / SAC's hand-written gradients give autograd's numbers (up to float rounding)."""

import pytest
import torch

import classic_rl
from classic_rl.agents.continuous import QEnsemble, weighted_mean
from classic_rl.agents.sac import LOG_STD_MAX
from classic_rl.fused.backprop import DenseStack
from classic_rl.fused.critics import CriticStacks, critic_regression_, tanh_actor_gradient_
from classic_rl.nets import flat_parameters, mlp

TOL = dict(rtol=1e-5, atol=1e-6)
SMALL = dict(env="Pendulum-v1", hidden=[32, 16], batch_size=64, learning_starts=200)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_dense_stack_forward_and_backward_equal_autograd(act):
    torch.manual_seed(0)
    net = mlp(5, [16, 8], 3, act=act)
    flat = flat_parameters(net)
    x, delta = torch.randn(20, 5), torch.randn(20, 3)
    stack = DenseStack.from_sequential(net)
    x_auto = x.clone().requires_grad_(True)
    out = net(x_auto)
    flat.grad.zero_()
    out.backward(delta)
    expected, expected_dx = flat.grad.clone(), x_auto.grad[:, 2:]
    flat.grad.fill_(123.0)  # overwritten, not accumulated
    torch.testing.assert_close(stack.forward(x, save=True), out.detach(), **TOL)
    stack.forward(torch.randn(7, 5))  # a forward without save in between leaves the saved pass alone
    dx = stack.backward(delta, input_columns=slice(2, None))
    torch.testing.assert_close(flat.grad, expected, **TOL)
    torch.testing.assert_close(dx, expected_dx, **TOL)
    flat.grad.fill_(7.0)
    stack.backward(delta, weight_grads=False)
    assert torch.all(flat.grad == 7.0)  # only what was asked for


def test_dense_stack_rejects_layers_it_does_not_cover():
    with pytest.raises(ValueError, match="Linear layers"):
        DenseStack.from_sequential(mlp(4, [8], 2, act="elu"))
    with pytest.raises(ValueError, match="activation"):
        DenseStack([torch.zeros(2, 2)], [torch.zeros(2)], act="gelu")
    frozen = DenseStack.from_sequential(mlp(4, [8], 2))  # no flat gradients: a target network
    frozen.forward(torch.zeros(3, 4), save=True)
    with pytest.raises(ValueError, match="without gradient"):
        frozen.backward(torch.zeros(3, 2))


def _twin_critics():
    torch.manual_seed(1)
    critic = QEnsemble(2, 3, 2, [16, 8])
    return critic, flat_parameters(critic)


@pytest.mark.parametrize("weighted", [False, True])
def test_critic_regression_gradient_equals_autograd(weighted):
    critic, flat = _twin_critics()
    obs, actions, td_target = torch.randn(30, 3), torch.rand(30, 2) * 2 - 1, torch.randn(30)
    weights = torch.rand(30) if weighted else None
    q = critic(obs, actions)
    expected_loss = weighted_mean((q - td_target).pow(2).sum(0), weights)
    flat.grad.zero_()
    expected_loss.backward()
    expected = flat.grad.clone()
    flat.grad.fill_(5.0)
    loss, got_q = critic_regression_(CriticStacks(critic), obs, actions, td_target, weights)
    torch.testing.assert_close(loss, expected_loss.detach(), **TOL)
    torch.testing.assert_close(got_q, q.detach(), **TOL)
    torch.testing.assert_close(flat.grad, expected, **TOL)


def test_deterministic_actor_gradient_goes_through_q1_and_leaves_the_critics_alone():
    critic, critic_flat = _twin_critics()
    torch.manual_seed(2)
    actor = mlp(3, [16], 2)
    actor_flat = flat_parameters(actor)
    obs = torch.randn(25, 3)
    expected_loss = -critic(obs, torch.tanh(actor(obs)), members=slice(0, 1)).mean()
    actor_flat.grad.zero_()
    critic_flat.grad.zero_()
    expected_loss.backward()
    expected = actor_flat.grad.clone()
    critic_flat.grad.fill_(3.0)
    loss = tanh_actor_gradient_(DenseStack.from_sequential(actor), CriticStacks(critic), obs)
    torch.testing.assert_close(loss, expected_loss.detach(), **TOL)
    torch.testing.assert_close(actor_flat.grad, expected, **TOL)
    assert torch.all(critic_flat.grad == 3.0)


def _pair(algo, **settings):
    """The same agent twice, replay filled alike: hand-written gradients and autograd."""
    agents = []
    for backend in ("fused", "autograd"):
        agent = classic_rl.make(algo, seed=4, update_backend=backend, **{**SMALL, **settings})
        agent.learn(total_steps=200, progress=False)  # random actions, no updates yet
        agents.append(agent)
    return agents


def _flats(agent):
    names = ("actor", "critic", "actor_target", "critic_target", "policy_flat")
    flats = [getattr(agent, name).param for name in names if hasattr(agent, name)]
    return flats + ([agent.log_alpha] if hasattr(agent, "log_alpha") else [])


def _train_alike(agents, updates):
    stats = []
    for agent in agents:
        torch.manual_seed(11)  # the update's noise (target smoothing, SAC's samples) comes from torch's generator
        stats.append(agent.train(updates))
    return stats


@pytest.mark.parametrize("algo,settings", [
    ("ddpg", {}), ("td3", {}), ("sac", {}), ("td3", dict(replay="proportional")),
    ("sac", dict(replay="rank", n_critics=3)), ("sac", dict(ent_coef="0.2")),
])
def test_one_update_gives_autograd_gradients_and_parameters(algo, settings):
    by_hand, autograd = _pair(algo, **settings)
    assert by_hand.update is not by_hand.autograd_update and autograd.update == autograd.autograd_update
    fast, plain = _train_alike([by_hand, autograd], 2)  # TD3: the second one moves the actor too
    for name in fast:
        torch.testing.assert_close(fast[name], plain[name], **TOL)
    for mine, theirs in zip(_flats(by_hand), _flats(autograd)):
        torch.testing.assert_close(mine, theirs, **TOL)
        if mine.grad is not None:
            torch.testing.assert_close(mine.grad, theirs.grad, **TOL)


def test_sac_log_std_clamp_blocks_the_gradient_like_autograd():
    by_hand, autograd = _pair("sac")
    for agent in (by_hand, autograd):  # every sigma_raw far above LOG_STD_MAX: the clamp is active
        with torch.no_grad():
            agent.policy.net[-1].bias[agent.act_dim:] = LOG_STD_MAX + 5.0
    _train_alike([by_hand, autograd], 1)
    for mine, theirs in zip(_flats(by_hand), _flats(autograd)):
        torch.testing.assert_close(mine, theirs, **TOL)
    sigma_bias_grad = by_hand.policy.net[-1].bias.grad[by_hand.act_dim:]
    assert torch.all(sigma_bias_grad == 0)


@pytest.mark.parametrize("algo", ["ddpg", "td3", "sac"])
def test_many_updates_stay_with_autograd_up_to_rounding(algo):
    agents = _pair(algo)
    _train_alike(agents, 100)
    for mine, theirs in zip(_flats(agents[0]), _flats(agents[1])):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
