"""The update_backend switch (fused | autograd) and the safety of flat parameters."""

import pytest
import torch

import classic_rl
from classic_rl.fused.adam import FlatAdam
from classic_rl.nets import QNetwork, flat_parameters, zero_flat_grad_

SMALL = dict(hidden=[16, 16], learning_starts=64, batch_size=16, buffer_size=1000)


@pytest.mark.parametrize("algo,env", [("dqn", "CartPole-v1"), ("ddpg", "Pendulum-v1"), ("sac", "Pendulum-v1")])
def test_the_deprecated_analytic_grad_maps_onto_update_backend(algo, env):
    assert classic_rl.make(algo, env, hidden=[8]).config.update_backend == "fused"
    for legacy, backend in ((True, "fused"), (False, "autograd")):
        agent = classic_rl.make(algo, env, hidden=[8], analytic_grad=legacy)
        assert agent.config.update_backend == backend and agent.config.analytic_grad is None
        optimizer = agent.optimizers()["q" if algo == "dqn" else "critic"]
        assert (type(optimizer) is FlatAdam) == (backend == "fused")


def test_an_unknown_backend_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="update_backend must be one of fused, autograd; got 'cuda'"):
        classic_rl.make("sac", "Pendulum-v1", update_backend="cuda")


def _trained(algo, env, zero_grad_first, **settings):
    agent = classic_rl.make(algo, env, seed=2, update_backend="autograd", **{**SMALL, **settings})
    agent.learn(total_steps=64, progress=False)  # replay only
    torch.manual_seed(5)
    for _ in range(3):
        if zero_grad_first:  # what a user's callback or subclass might do between updates
            for module in agent.networks().values():
                module.zero_grad()
        agent.train(1)
    return agent


@pytest.mark.parametrize("algo,env", [("dqn", "CartPole-v1"), ("sac", "Pendulum-v1"), ("sac_discrete", "CartPole-v1")])
def test_module_zero_grad_between_updates_changes_nothing(algo, env):
    plain, zeroed = _trained(algo, env, False), _trained(algo, env, True)
    fresh = classic_rl.make(algo, env, seed=2, update_backend="autograd", **SMALL)
    moved = False
    for name, module in plain.networks().items():
        for p, q, r in zip(module.parameters(), zeroed.networks()[name].parameters(), fresh.networks()[name].parameters()):
            assert torch.equal(p, q), name  # before the fix: the zeroed agent's flat grad stayed 0, no learning
            moved = moved or not torch.equal(p, r)
    assert moved  # the updates did change the weights


def test_ppo_flat_parameters_survive_module_zero_grad():
    agents = []
    for zero_grad_first in (False, True):
        agent = classic_rl.make("ppo", "CartPole-v1", seed=0, num_envs=2, n_steps=16, batch_size=16, n_epochs=1)
        if zero_grad_first:
            agent.policy.zero_grad()  # cuts every per-layer .grad loose from the flat buffer
        agent.learn(total_steps=64, progress=False)
        agents.append(agent)
    for p, q in zip(agents[0].policy.parameters(), agents[1].policy.parameters()):
        assert torch.equal(p, q)


def test_zero_flat_grad_relinks_views_and_refuses_moved_parameters():
    net = QNetwork((3,), 2, hidden=[4])
    flat = flat_parameters(net)
    net.zero_grad()  # set_to_none: the per-layer grads are gone
    assert all(p.grad is None for p in net.parameters())
    zero_flat_grad_(flat)
    net(torch.randn(5, 3)).sum().backward()
    assert flat.grad.abs().sum() > 0  # the backward pass landed in the flat buffer again
    net.double()
    with pytest.raises(RuntimeError, match="left its flat_parameters buffer"):
        zero_flat_grad_(flat)


def test_ppo_backends_use_their_optimizer_and_train_bit_for_bit_alike():
    agents = []
    for backend in ("fused", "autograd"):
        agent = classic_rl.make("ppo", "CartPole-v1", seed=0, num_envs=2, n_steps=16, batch_size=16, n_epochs=2,
                                update_backend=backend)
        assert (type(agent.optimizers()["optimizer"]) is FlatAdam) == (backend == "fused")
        agent.learn(total_steps=64, progress=False)
        agents.append(agent)
    for p, q in zip(agents[0].policy.parameters(), agents[1].policy.parameters()):
        assert torch.equal(p, q)  # FlatAdam is torch's fused Adam kernel without the bookkeeping
