"""DQN's fast update parts give the same numbers as the plain torch ones they replace."""

import pytest
import torch
import torch.nn.functional as F

import classic_rl
from classic_rl.fused.adam import FlatAdam
from classic_rl.fused.backprop import MLPQRegression, supports_analytic_grad
from classic_rl.fused.updates import FusedQRegression
from classic_rl.nets import QNetwork, flat_parameters


def test_flat_adam_matches_torch_adam_bit_for_bit_and_shares_its_state_dict():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(500))
    b = torch.nn.Parameter(a.detach().clone())
    reference = torch.optim.Adam([a], lr=1e-2, eps=1e-5, fused=True)
    fast = FlatAdam(b, lr=1e-2, eps=1e-5)
    for _ in range(10):
        g = torch.randn(500)
        a.grad, b.grad = g.clone(), g.clone()
        reference.step()
        fast.step()
    assert torch.equal(a, b)
    for key in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(reference.state[a][key], fast.state[b][key])
    restored = torch.optim.Adam([torch.nn.Parameter(b.detach().clone())], lr=1e-2, eps=1e-5, fused=True)
    restored.load_state_dict(fast.state_dict())  # a checkpoint of either loads into the other
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], fast.state[b]["exp_avg"])


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("loss", ["huber", "mse"])
def test_hand_written_backprop_equals_autograd(act, loss):
    torch.manual_seed(0)
    net = QNetwork((6,), 3, hidden=[32, 16], act=act)
    flat = flat_parameters(net)
    obs, actions, targets = torch.randn(20, 6) * 3, torch.randint(0, 3, (20,)), torch.randn(20) * 3
    q = net(obs).gather(1, actions[:, None]).squeeze(1)
    expected_loss = (F.smooth_l1_loss if loss == "huber" else F.mse_loss)(q, targets)
    flat.grad.zero_()
    expected_loss.backward()
    expected_grad = flat.grad.clone()
    flat.grad.fill_(123.0)  # stale values are overwritten, not accumulated
    got_loss = MLPQRegression(net, loss)(obs, actions, targets)
    torch.testing.assert_close(got_loss, expected_loss.detach())
    torch.testing.assert_close(flat.grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_hand_written_backprop_is_used_only_where_it_applies():
    plain = classic_rl.make("dqn", env="CartPole-v1", seed=0, hidden=[8])
    assert isinstance(plain.loss_and_gradient, FusedQRegression) and type(plain.optimizer) is FlatAdam
    autograd = classic_rl.make("dqn", env="CartPole-v1", seed=0, hidden=[8], update_backend="autograd")
    assert autograd.loss_and_gradient == autograd.autograd_loss_and_gradient
    assert type(autograd.optimizer) is torch.optim.Adam
    for name in ("dueling_dqn", "per_dqn", "c51", "noisy_dqn", "rainbow"):
        agent = classic_rl.make(name, env="CartPole-v1", seed=0, hidden=[8])
        assert agent.loss_and_gradient == agent.autograd_loss_and_gradient, name
        assert type(agent.optimizer) is FlatAdam, name
    net = QNetwork((4,), 2, hidden=[8], act="elu")
    flat_parameters(net)
    assert not supports_analytic_grad(net, "huber")
    with pytest.raises(ValueError, match="activation"):
        MLPQRegression(net)


def test_dqn_trains_the_same_with_and_without_the_hand_written_gradient():
    settings = dict(hidden=[32, 32], learning_starts=100, train_freq=4, gradient_steps=4, batch_size=32,
                    target_update_interval=100, exploration_fraction=0.5)
    weights = []
    for backend in ("fused", "autograd"):
        agent = classic_rl.make("dqn", env="CartPole-v1", seed=3, update_backend=backend, **settings)
        agent.learn(total_steps=600, progress=False)
        weights.append(agent.q_flat.detach().clone())
    # 500 updates apart only by float rounding of the gradients
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-3, atol=1e-4)
