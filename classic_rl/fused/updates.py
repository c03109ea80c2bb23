"""The fused updates of DQN, DDPG/TD3 and SAC: each the agent's autograd update, gradients by hand.

Each class is built by the agent when ``update_backend`` is ``fused`` (:func:`classic_rl.fused.select_update`)
and called where the autograd update would be, with the same arguments; it reads and writes the
agent's own networks, optimizers and counters, so checkpoints and resume do not depend on the
backend. The math is the autograd update's, in the agent's module docstring; the tests in
``tests/test_fused_*_update.py`` hold the two equal up to float rounding on the same minibatch.
"""

from __future__ import annotations

from typing import Any

import torch

from classic_rl.buffers import Batch
from classic_rl.fused.backprop import DenseStack, MLPQRegression, supports_analytic_grad
from classic_rl.fused.critics import (
    CriticStacks,
    critic_regression_,
    squashed_actor_gradient_,
    tanh_actor_gradient_,
)


class FusedQRegression:
    """DQN's ``loss_and_gradient`` for plain MLP Q-networks and uniform replay (:class:`MLPQRegression`)."""

    @staticmethod
    def applies(agent: Any) -> bool:
        """Plain MLP head (no CNN, dueling, C51 or noisy layers), relu/tanh, uniform replay (no importance weights)."""
        return not agent.buffer.prioritized and supports_analytic_grad(agent.q_net, agent.config.loss)

    def __init__(self, agent: Any) -> None:
        self.regression = MLPQRegression(agent.q_net, agent.config.loss)

    def __call__(self, batch: Batch, actions: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, None]:
        """``(loss, td_error)`` with the gradient in the flat ``.grad``; no td_error (uniform replay needs none)."""
        return self.regression(batch.obs, actions, targets), None


class FusedDDPGUpdate:
    """:meth:`classic_rl.agents.ddpg.DDPG.autograd_update` (DDPG and TD3) with the gradients by hand."""

    def __init__(self, agent: Any) -> None:
        from classic_rl.agents.ddpg import td3_target  # the agent's module imports this one

        self.agent = agent
        self.td3_target = td3_target
        self.actor = DenseStack.from_sequential(agent.actor.module)  # views of the flat parameters and gradients
        self.actor_target = DenseStack.from_sequential(agent.actor_target.module)
        self.critic = CriticStacks(agent.critic.module)
        self.critic_target = CriticStacks(agent.critic_target.module)

    @torch.no_grad()
    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        agent, cfg = self.agent, self.agent.config
        obs = batch.obs
        td_target = self.td3_target(
            batch.next_obs, batch.rewards, batch.discounts, self.actor_target.forward, self.critic_target.values,
            cfg.target_policy_noise, cfg.target_noise_clip,
        )
        critic_loss, q = critic_regression_(self.critic, obs, agent.normalize_actions(batch.actions), td_target,
                                            batch.weights)
        agent.critic.optimizer.step()
        agent.critic_updates += 1
        stats = {"critic_loss": critic_loss, "td_error": (q[0] - td_target).abs()}
        if agent.critic_updates % cfg.policy_delay == 0:
            stats["actor_loss"] = tanh_actor_gradient_(self.actor, self.critic, obs)
            agent.actor.optimizer.step()
            agent.critic_target.polyak_(agent.critic, cfg.tau)
            agent.actor_target.polyak_(agent.actor, cfg.tau)
        return stats


class FusedSACUpdate:
    """:meth:`classic_rl.agents.sac.SAC.autograd_update` with the gradients by hand."""

    def __init__(self, agent: Any) -> None:
        from classic_rl.agents.sac import squashed_sample  # the agent's module imports this one

        self.agent = agent
        self.squashed_sample = squashed_sample
        self.policy = DenseStack.from_sequential(agent.policy.net)
        self.critic = CriticStacks(agent.critic.module)
        self.critic_target = CriticStacks(agent.critic_target.module)

    @torch.no_grad()
    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        agent, cfg = self.agent, self.agent.config
        obs, n, act_dim = batch.obs, len(batch.obs), agent.act_dim
        out = self.policy.forward(obs, save=True)
        a_pi, logp, log_std, eps = self.squashed_sample(out, act_dim)
        alpha = agent.log_alpha.detach().exp()  # the value before this step's alpha update
        next_a, next_logp, _, _ = self.squashed_sample(self.policy.forward(batch.next_obs), act_dim)
        q_next = self.critic_target.values(batch.next_obs, next_a).min(dim=0).values
        td_target = batch.rewards + batch.discounts * (q_next - alpha * next_logp)
        critic_loss, q = critic_regression_(self.critic, obs, agent.normalize_actions(batch.actions), td_target,
                                            batch.weights)
        agent.critic.optimizer.step()

        q_pi, argmin = self.critic.values(obs, a_pi, save=True).min(dim=0)
        actor_loss = (alpha * logp - q_pi).mean()
        dq = torch.zeros(len(self.critic.members), n).scatter_(0, argmin[None], -1.0 / n)  # d(-mean min_k Q_k)
        grad_a = self.critic.backward(dq, weight_grads=False, action_grad=True)
        squashed_actor_gradient_(self.policy, out, a_pi, log_std, eps, alpha, grad_a)
        agent.policy_flat.optimizer.step()
        stats = dict(critic_loss=critic_loss, actor_loss=actor_loss, alpha=alpha, entropy=-logp.mean(),
                     td_error=(q[0] - td_target).abs())
        if agent.learn_alpha:  # alpha_loss = -mean log_alpha (logp + target_entropy)
            entropy_gap = logp + agent.target_entropy
            stats["alpha_loss"] = -(agent.log_alpha.detach() * entropy_gap).mean()
            agent.log_alpha.grad = -entropy_gap.mean().reshape(1)
            agent.alpha_opt.step()
        agent.critic_target.polyak_(agent.critic, cfg.tau)
        return stats
