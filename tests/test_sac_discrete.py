"""Discrete SAC: the soft target and actor loss by hand, temperature, saving, learning CartPole."""

import math

import numpy as np
import pytest
import torch

import classic_rl
from classic_rl.agents.sac_discrete import discrete_actor_loss, soft_state_value
from classic_rl.buffers import Batch

SMALL = dict(hidden=[32, 32], batch_size=32, learning_starts=50, buffer_size=1000)


def set_constant_output(layers, values):
    """Make an MLP (Linear layers) or a GroupedMLP output ``values`` for every input."""
    with torch.no_grad():
        for weight, bias in layers[:-1]:
            weight.zero_()
            bias.zero_()
        weight, bias = layers[-1]
        weight.zero_()
        bias.copy_(torch.as_tensor(values, dtype=torch.float32).reshape(bias.shape))


def test_soft_target_matches_the_hand_computed_value():
    # pi(.|s') = (0.25, 0.75); target critics Q'_1 = (1, 2), Q'_2 = (3, 0.5) -> min = (1, 0.5); alpha = 0.5
    expected_v = 0.25 * (1 - 0.5 * math.log(0.25)) + 0.75 * (0.5 - 0.5 * math.log(0.75))  # 0.906168
    log_pi = torch.log(torch.tensor([[0.25, 0.75]]))
    v = soft_state_value(torch.tensor([[1.0, 0.5]]), log_pi, 0.5)
    assert v.item() == pytest.approx(expected_v, abs=1e-6)

    # the same numbers through the agent's update: r = 1, discount = 0.9, online Q_1(s, a=1) = 4
    agent = classic_rl.make("sac_discrete", env="CartPole-v1", seed=0, ent_coef="0.5", **SMALL)
    policy = [(m.weight, m.bias) for m in agent.policy.module if isinstance(m, torch.nn.Linear)]
    set_constant_output(policy, np.log([0.25, 0.75]))
    for critic in (agent.critic.module, agent.critic_target.module):
        set_constant_output(list(critic._layers), [[1.0, 2.0], [3.0, 0.5]] if critic is agent.critic_target.module
                            else [[0.0, 4.0], [0.0, 4.0]])
    obs = torch.zeros(1, 4)
    batch = Batch(obs=obs, actions=torch.tensor([1]), rewards=torch.tensor([1.0]), next_obs=obs,
                  discounts=torch.tensor([0.9]), weights=None, indices=np.zeros(1, dtype=np.int64))
    stats = agent.train_step(batch)
    assert stats["td_error"].item() == pytest.approx(4.0 - (1.0 + 0.9 * expected_v), abs=1e-5)
    assert stats["entropy"].item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)


def test_actor_loss_gradient_moves_pi_towards_softmax_q_over_alpha():
    q = torch.tensor([[1.0, 0.5]])
    logits = torch.zeros(1, 2, requires_grad=True)  # uniform policy
    discrete_actor_loss(torch.log_softmax(logits, -1), q, alpha=0.1).backward()
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]  # a descent step raises pi(a=0), the better action
    # with equal Q the entropy term alone pulls a skewed policy back towards uniform
    logits = torch.tensor([[-1.0, 1.0]], requires_grad=True)
    discrete_actor_loss(torch.log_softmax(logits, -1), torch.zeros(1, 2), alpha=0.1).backward()
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]
    # pi = softmax(Q / alpha) is the minimiser: the gradient vanishes there
    logits = (q / 0.1).clone().requires_grad_(True)
    discrete_actor_loss(torch.log_softmax(logits, -1), q, alpha=0.1).backward()
    torch.testing.assert_close(logits.grad, torch.zeros(1, 2), atol=1e-6, rtol=0)


def test_temperature_falls_while_the_entropy_is_above_target():
    agent = classic_rl.make("sac_discrete", env="CartPole-v1", seed=0, **SMALL).learn(total_steps=200, progress=False)
    assert agent.target_entropy == pytest.approx(0.89 * math.log(2))
    assert agent.log_alpha.item() < 0.0  # the near-uniform initial policy has entropy ~log 2 > target
    fixed = classic_rl.make("sac_discrete", env="CartPole-v1", seed=0, ent_coef="0.2", **SMALL)
    fixed.learn(total_steps=120, progress=False)
    assert fixed.log_alpha.item() == pytest.approx(math.log(0.2))


def test_bad_settings_and_spaces_are_rejected_with_clear_errors():
    with pytest.raises(ValueError, match="needs a continuous action space.*CartPole-v1.*sac_discrete"):
        classic_rl.make("sac", env="CartPole-v1")
    with pytest.raises(ValueError, match="sac_discrete needs a discrete action space.*use sac"):
        classic_rl.make("sac_discrete", env="Pendulum-v1")
    with pytest.raises(ValueError, match="target_entropy_scale"):
        classic_rl.make("sac_discrete", env="CartPole-v1", target_entropy_scale=1.5)
    with pytest.raises(ValueError, match="ent_coef"):
        classic_rl.make("sac_discrete", env="CartPole-v1", ent_coef="sometimes")


def test_save_load_keeps_greedy_actions_and_resume_is_exact(tmp_path):
    straight = classic_rl.make("sac_discrete", env="CartPole-v1", seed=3, **SMALL).learn(total_steps=160, progress=False)
    first = classic_rl.make("sac_discrete", env="CartPole-v1", seed=3, **SMALL).learn(total_steps=100, progress=False)
    first.save(tmp_path / "agent")
    loaded = classic_rl.load(tmp_path / "agent")
    observations = np.random.default_rng(0).normal(0, 0.5, size=(50, 4)).astype(np.float32)
    assert [loaded.act(o) for o in observations] == [first.act(o) for o in observations]
    assert loaded.log_alpha.item() == first.log_alpha.item() and len(loaded.buffer) == len(first.buffer)
    resumed = loaded.learn(total_steps=60, progress=False)
    for name in ("critic", "critic_target", "policy"):
        torch.testing.assert_close(getattr(resumed, name).param, getattr(straight, name).param, rtol=0, atol=0)


@pytest.mark.slow
def test_learning_beats_random_on_cartpole():
    agent = classic_rl.make("sac_discrete", env="CartPole-v1", seed=0)  # configs/classic/sac_discrete.yaml
    before, _ = agent.evaluate(episodes=5, seed=100)
    agent.learn(total_steps=3000, progress=False)
    after, _ = agent.evaluate(episodes=5, seed=100)
    assert after > 150, (before, after)  # random play scores ~22
    assert after > before + 100, (before, after)
