"""The critics' and the actors' gradients written out by hand (DDPG, TD3, SAC).

What autograd would do for these losses, done with :class:`~classic_rl.fused.backprop.DenseStack`
(hand-written backprop for one ReLU MLP), for the reasons its module gives: on a CPU with
batch 256 and [400, 300] layers, graph bookkeeping, fresh activations, the ``expand`` + ``sum``
of the twin critics' shared input and gradients nobody needs (the critic's weight gradients in
the actor's loss) are a large share of the update's time. The gradients (tested against
autograd: equal up to float rounding)::

    critic loss  L = mean_i w_i sum_k (Q_k(s_i, a_i) - y_i)^2     (w_i = 1 without prioritized replay)
        dL/dQ_k(s_i, a_i) = 2 w_i (Q_k(s_i, a_i) - y_i) / B        -> each critic's weight gradients
    actor loss of a deterministic tanh policy  L = -mean_i Q_1(s_i, tanh(z(s_i)))
        dL/du_i = -(dQ_1/du)(s_i, u_i) / B                         (critic input gradient, action columns)
        dL/dz_i = dL/du_i * (1 - u_i^2)                            -> the actor's weight gradients

The critic ``Q_k`` is member ``k`` of a :class:`~classic_rl.agents.continuous.QEnsemble` (its
own weights ``w{j}[k]``), run as a separate matrix product per member: the shared ``[s, a]``
input is not copied ``n`` times, and each weight gradient lands in its flat ``.grad`` view.
"""

from __future__ import annotations

import torch

from classic_rl.agents.continuous import QEnsemble, weighted_mean
from classic_rl.fused.backprop import DenseStack
from classic_rl.policies import LOG_STD_MAX, LOG_STD_MIN


class CriticStacks:
    """The members of a :class:`QEnsemble` (one output each) as hand-written MLPs over ``[s, a]``."""

    def __init__(self, module: QEnsemble) -> None:
        if module.out_dim != 1:
            raise ValueError(f"CriticStacks needs critics with one output, got out_dim={module.out_dim}")
        layers = module._layers
        trainable = all(w.grad is not None and b.grad is not None for w, b in layers)
        self.members = [
            DenseStack(
                [w[k] for w, _ in layers], [b[k, 0] for _, b in layers],
                [w.grad[k] for w, _ in layers] if trainable else None,
                [b.grad[k, 0] for _, b in layers] if trainable else None,
            )
            for k in range(module.n)
        ]
        self.obs_dim = module.obs_dim

    def values(self, obs: torch.Tensor, actions: torch.Tensor, save: bool = False,
               members: slice | None = None) -> torch.Tensor:
        """``Q_k(s, a)`` of every member (or of ``members``), shape (n, B); ``save`` for :meth:`backward`."""
        x = torch.cat([obs, actions], dim=1)
        stacks = self.members if members is None else self.members[members]
        return torch.cat([stack.forward(x, save).t() for stack in stacks])

    def backward(self, dq: torch.Tensor, weight_grads: bool = True, action_grad: bool = False,
                 members: slice | None = None) -> torch.Tensor | None:
        """Backpropagate ``dq = dL/dQ`` (n, B) through the last saved :meth:`values` call.

        Writes the critics' weight gradients when ``weight_grads``; returns ``dL/da`` (B, act_dim)
        summed over the members when ``action_grad``.
        """
        stacks = self.members if members is None else self.members[members]
        columns = slice(self.obs_dim, None) if action_grad else None
        grad_a = None
        for stack, delta in zip(stacks, dq):
            g = stack.backward(delta.unsqueeze(1), weight_grads, columns)
            if action_grad:
                grad_a = g if grad_a is None else grad_a.add_(g)
        return grad_a


def critic_regression_(
    critic: CriticStacks, obs: torch.Tensor, actions: torch.Tensor, td_target: torch.Tensor,
    weights: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss ``mean_i w_i sum_k (Q_k - y_i)^2`` and its gradient in the critics' ``.grad``; returns (loss, Q)."""
    q = critic.values(obs, actions, save=True)
    diff = q - td_target
    loss = weighted_mean(diff.square().sum(0), weights)
    scale = 2.0 / len(td_target)
    critic.backward(diff.mul_(scale) if weights is None else diff.mul_(weights * scale))
    return loss, q


def tanh_actor_gradient_(actor: DenseStack, critic: CriticStacks, obs: torch.Tensor) -> torch.Tensor:
    """Loss ``-mean Q_1(s, tanh(z(s)))`` and its gradient in the actor's ``.grad`` (the critic's untouched)."""
    u = torch.tanh(actor.forward(obs, save=True))
    first = slice(0, 1)
    q = critic.values(obs, u, save=True, members=first)
    dq = torch.full_like(q, -1.0 / q.shape[1])
    grad_u = critic.backward(dq, weight_grads=False, action_grad=True, members=first)
    actor.backward(grad_u.mul_(1.0 - u * u))
    return -q.mean()


def squashed_actor_gradient_(
    policy: DenseStack, out: torch.Tensor, a: torch.Tensor, log_std: torch.Tensor, eps: torch.Tensor,
    alpha: torch.Tensor, grad_a: torch.Tensor,
) -> None:
    """Backpropagate SAC's ``actor_loss = mean_i (alpha log pi(a_i|s_i) - min_k Q_k(s_i, a_i))`` into ``policy``.

    ``grad_a`` is the Q part's ``dL/da`` (from the critics' input gradient), ``out`` the policy net's
    output ``[mu, log_sigma_raw]`` saved with its forward pass. With ``u = mu + sigma eps``,
    ``a = tanh(u)`` and ``d/du log pi = 2 tanh(u) = 2 a`` (the terms of
    :func:`classic_rl.agents.sac.squash_with_log_prob`)::

        dL/du         = dL/da (1 - a^2) + 2 alpha a / B
        dL/dmu        = dL/du
        dL/dlog_sigma = dL/du sigma eps - alpha / B      (zero where the clamp to [-20, 2] was active)
    """
    scale = alpha / len(a)
    grad_u = torch.addcmul(grad_a.mul_(1.0 - a * a), a, 2.0 * scale)
    grad_log_std = torch.addcmul(-scale, grad_u, log_std.exp() * eps)
    raw = out[:, a.shape[1]:]
    grad_log_std.mul_(((raw >= LOG_STD_MIN) & (raw <= LOG_STD_MAX)).to(grad_log_std.dtype))
    policy.backward(torch.cat([grad_u, grad_log_std], dim=1))
