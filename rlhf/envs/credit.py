"""PPO's credit assignment across the turns of an episode (docs/rlhf_methods.md, "Environments").

GAE runs over the turn-level sequence -- one step per policy turn -- with
``classic_rl.core.advantages.gae``, and each turn's advantage and return are spread to that turn's
policy tokens::

    r_k = R_k - beta * sum_{t in turn k} KL_t                 the env's reward and the turn's KL penalty
    V_k = V(s_k)                                              the critic at the turn's first policy token
    delta_k = r_k + gamma * V_{k+1} * (1 - terminated_k) - V_k
    A_k = delta_k + gamma * lam * (1 - end_k) * A_{k+1},  G_k = A_k + V_k
    A_t = A_k, G_t = G_k                                      for every policy token t of turn k

``V_{k+1}`` after the last turn is the critic's value of the conversation after the final observation
of a truncated episode (bootstrap on truncation) and 0 after termination, as the classic agents do.
The value at the turn's first token is the value of the state the turn acts in: a later token of the
turn has already seen part of the reply, so its value would be close to Q(s, a) and leave the advantage
near zero whatever the action.
"""

from __future__ import annotations

import torch
from torch import Tensor

from classic_rl.core.advantages import gae

__all__ = ["spread_to_tokens", "turn_advantages", "turn_gae"]


@torch.no_grad()
def turn_gae(
    rewards: Tensor, values: Tensor, turn_mask: Tensor, terminated: Tensor, bootstrap_values: Tensor,
    gamma: float, lam: float,
) -> tuple[Tensor, Tensor]:
    """Turn-level GAE: ``(B, K)`` rewards, values and mask (real turns first), ``(B,)`` terminated flags and
    the values after the last turn -> ``(B, K)`` advantages and returns (0 on padded turns)."""
    valid = turn_mask.to(values.dtype)
    B, K = rewards.shape
    n = turn_mask.long().sum(1)  # turns of each episode
    last = torch.zeros_like(valid)
    last[torch.arange(B, device=valid.device), (n - 1).clamp(min=0)] = 1.0
    last = last * (n > 0).to(valid.dtype).unsqueeze(1)
    # V_{k+1}: the next turn's value inside the episode, the bootstrap after its last turn
    shifted = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    next_values = torch.where(last.bool(), bootstrap_values.to(values.dtype).unsqueeze(1), shifted) * valid
    ended = last * terminated.to(values.dtype).unsqueeze(1)
    return gae(rewards * valid, values * valid, mask=valid, next_values=next_values, terminated=ended,
               episode_end=last, gamma=gamma, lam=lam)


def spread_to_tokens(per_turn: Tensor, token_turn: Tensor) -> Tensor:
    """``(B, K)`` per-turn values -> ``(B, R)``: each policy token gets its turn's value, other tokens 0."""
    index = token_turn.clamp(min=0)
    return torch.where(token_turn >= 0, per_turn.gather(1, index), torch.zeros((), dtype=per_turn.dtype, device=per_turn.device))


@torch.no_grad()
def turn_advantages(batch, kl_coef: float, gamma: float, lam: float) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's token-level ``(advantages, returns, non_score_reward)`` of an ``EnvRollout`` (module docstring)."""
    non_score = -kl_coef * batch.kl  # (B, R), 0 off the policy's tokens
    turn_kl = torch.zeros_like(batch.turn_rewards).scatter_add_(
        1, batch.token_turn.clamp(min=0), torch.where(batch.token_turn >= 0, non_score, 0.0))
    rewards = batch.turn_rewards + turn_kl
    advantages, returns = turn_gae(rewards, batch.turn_values, batch.turn_mask, batch.terminated,
                                   batch.bootstrap_values, gamma, lam)
    return spread_to_tokens(advantages, batch.token_turn), spread_to_tokens(returns, batch.token_turn), non_score
