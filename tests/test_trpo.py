"""TRPO: conjugate gradient, the KL-bounded line search, and the agent."""

import numpy as np
import pytest
import torch

from classic_rl.agents.trpo import TRPO, conjugate_gradient, kl_line_search


def test_conjugate_gradient_solves_a_small_spd_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    A = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: A @ v, b, max_steps=6, residual_tol=1e-20)
    assert torch.allclose(x, torch.linalg.solve(A, b), atol=1e-8)
    # fewer iterations: a worse but still improving approximation
    res = [float((A @ conjugate_gradient(lambda v: A @ v, b, max_steps=k) - b).norm()) for k in (1, 3, 6)]
    assert res[0] > res[2] and res[2] < 1e-6


def _toy_problem(direction_sign: float):
    """objective(x) = sign * d.x, KL(x) = 2 ||x - x0||^2 (a quadratic trust region)."""
    x0 = torch.tensor([1.0, -1.0])
    d = torch.tensor([3.0, 4.0])

    def evaluate(x):
        return float(direction_sign * d.dot(x)), float(2.0 * (x - x0).pow(2).sum())

    return x0, d, evaluate


def test_line_search_shrinks_the_step_until_the_kl_bound_holds():
    x0, d, evaluate = _toy_problem(+1.0)
    max_kl = 0.5
    full_step = d / d.norm()  # KL(full step) = 2 > max_kl; needs frac^2 * 2 <= 0.5, frac <= 0.5
    x, frac = kl_line_search(evaluate, x0, full_step, max_kl, shrink=0.8, max_iter=10)
    assert frac == pytest.approx(0.8**4)  # the first of 1, 0.8, 0.64, 0.512, 0.4096 with frac <= 0.5
    objective, kl = evaluate(x)
    assert kl <= max_kl and objective > evaluate(x0)[0]


@pytest.mark.slow
def test_line_search_keeps_the_old_point_when_no_step_improves():
    x0, d, evaluate = _toy_problem(-1.0)  # every step along d lowers the objective
    x, frac = kl_line_search(evaluate, x0, d / d.norm(), max_kl=10.0)
    assert frac == 0.0 and torch.equal(x, x0)


def test_policy_step_respects_the_trust_region_on_real_data():
    agent = TRPO("CartPole-v1", seed=0, n_steps=256, max_kl=0.005)
    agent.collector = agent.make_collector()
    rollout = agent.collector.collect(agent.config.n_steps)
    before = [p.detach().clone() for p in agent.policy.actor_parameters()]
    stats = agent.update(rollout, 1.0)
    assert 0.0 < stats["policy/step_fraction"] <= 1.0
    assert stats["policy/kl"] <= 0.005 + 1e-6
    assert stats["policy/surrogate_gain"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.actor_parameters()))


@pytest.mark.slow
def test_trpo_beats_random_on_cartpole():
    agent = TRPO("CartPole-v1", seed=0)
    agent.learn(total_steps=10_000, progress=False)
    assert agent.evaluate(episodes=5, seed=1000)[0] > 100  # random play: ~22


def test_trpo_continuous_state_dependent_std_runs_on_pendulum():
    agent = TRPO("Pendulum-v1", seed=0, n_steps=256, num_envs=2, state_dependent_std=True)
    agent.learn(total_steps=1_024, progress=False)
    action = agent.act(np.zeros(3, np.float32))
    assert action.shape == (1,) and -2.0 <= float(action[0]) <= 2.0


def test_trpo_rejects_a_shared_trunk():
    with pytest.raises(ValueError, match="share_trunk"):
        TRPO("CartPole-v1", share_trunk=True)
