"""D4PG (Barth-Maron et al., 2018): DDPG with a categorical critic, n-step returns, prioritized
replay and several actor processes feeding one learner.

The critic outputs a distribution over ``n_atoms`` fixed returns ``z_j`` in ``[v_min, v_max]``
(C51's support). With n-step transitions ``(s, a, G, s', discount = gamma^m (1 - terminated))``::

    p'          = softmax Z'(s', mu'(s'))                                    target networks
    target      = Phi(G + discount * z, p')        C51 projection (classic_rl.core.distributional)
    critic_loss = mean_i w_i * CE(target_i, softmax Z(s_i, a_i))             w_i: PER weights
    actor_loss  = -mean sum_j softmax Z(s, mu(s))_j z_j                      -E[Z(s, mu(s))]
    theta' <- (1 - tau) theta' + tau theta;  new priorities: the per-sample cross-entropies

Actors (``n_workers`` processes or Ray actors, :mod:`classic_rl.workers`) run the policy with Gaussian noise and compute n-step
transitions (:class:`classic_rl.buffers.NStepWindow`); the learner stores them in its replay and
trains. Collection is synchronous and pipelined: in round k every actor gathers
``actor_steps`` steps with the weights of round k while the learner trains on round k-1's
transitions, so runs stay reproducible (same seed, same numbers) and actors lag one round.
``n_workers=0`` runs the shared single-process off-policy loop instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from classic_rl.agents.base import register
from classic_rl.agents.continuous import (
    ContinuousAgent,
    ContinuousConfig,
    NumpyMLP,
    QEnsemble,
    online_and_target,
    weighted_mean,
)
from classic_rl.buffers import Batch, NStepWindow
from classic_rl.core.distributional import categorical_projection, make_support
from classic_rl.env_utils import make_env
from classic_rl.logger import RunLogger
from classic_rl.nets import mlp, numpy_forward, numpy_layers_from_weights
from classic_rl.policies import run_mlp
from classic_rl.workers import DEFAULT_TIMEOUT_S, make_pool, validate_worker_settings


@dataclass
class D4PGConfig(ContinuousConfig):
    renamed: ClassVar[dict[str, str]] = {"n_actors": "n_workers"}
    """Old setting names still accepted (with a warning)."""
    n_step: int = 5
    noise_std: float = 0.2
    """Gaussian exploration noise, in [-1, 1] action units."""
    n_atoms: int = 51
    v_min: float = -150.0
    v_max: float = 150.0
    """Support of the return distribution: set it to cover the (discounted) returns of the task."""
    n_workers: int = 2
    """Actors (processes or Ray actors); 0 collects in the learner's process with the shared loop.
    (``n_actors`` is accepted as a deprecated alias.)"""
    worker_backend: str = "process"
    """``process`` (local processes) or ``ray`` (Ray actors; joins ``RAY_ADDRESS`` when set)."""
    worker_timeout_s: float = DEFAULT_TIMEOUT_S
    """Seconds one round of collection may take before a silent actor counts as hung."""
    actor_steps: int = 100
    """Environment steps per actor per round (the learner syncs weights to actors once per round)."""

    def validate(self) -> None:
        super().validate()
        make_support(self.v_min, self.v_max, self.n_atoms)
        validate_worker_settings("d4pg", self.n_workers, self.worker_backend, self.worker_timeout_s)
        if self.actor_steps < 1:
            raise ValueError(f"actor_steps must be >= 1, got {self.actor_steps}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if self.n_workers > 0 and (self.n_envs != 1 or self.vec_env != "none"):
            # the actor processes collect (one env each); the learner's own envs would sit idle
            raise ValueError(
                f"n_envs={self.n_envs}, vec_env={self.vec_env!r} apply only with n_workers=0 (the shared "
                f"single-process loop); with n_workers={self.n_workers} scale collection with n_workers instead"
            )


def distributional_critic_loss(
    logits: torch.Tensor, target_probs: torch.Tensor,
) -> torch.Tensor:
    """Per-sample cross-entropy ``-sum_j target_j log softmax(logits)_j``."""
    return -(target_probs * torch.log_softmax(logits, dim=-1)).sum(-1)


# ---------------------------------------------------------------------------------- actor processes
@dataclass
class ActorSpec:
    """What an actor process needs: how to build its env, the policy shape and the noise."""

    env: Any
    env_kwargs: dict
    obs_dim: int
    action_center: np.ndarray
    action_half: np.ndarray
    noise_std: float
    n_step: int
    gamma: float


def _numpy_policy(weights: list[np.ndarray], obs: np.ndarray) -> np.ndarray:
    """The actor MLP in numpy: ReLU hidden layers, tanh output; weights alternate W, b."""
    return numpy_forward(numpy_layers_from_weights(weights, "relu", out_act="tanh"), obs)


class ActorWorker:
    """One actor: its own env, noise generator and n-step window, kept between rounds."""

    def __init__(self, spec: ActorSpec, seed: int) -> None:
        import copy

        self.spec = spec
        self.env = copy.deepcopy(spec.env) if isinstance(spec.env, gym.Env) else make_env(spec.env, spec.env_kwargs)
        self.rng = np.random.default_rng(seed)
        self.window = NStepWindow(spec.n_step, spec.gamma)
        self.obs, _ = self.env.reset(seed=int(self.rng.integers(2**31 - 1)))
        self.ep_return, self.ep_length = 0.0, 0

    def collect(self, steps: int, weights: list[np.ndarray] | None) -> tuple:
        """``steps`` steps with the policy ``weights`` plus noise (None: uniform random actions).

        Returns (n-step transitions as arrays or None, finished episodes as (return, length)).
        """
        spec, env, rng = self.spec, self.env, self.rng
        shape = env.action_space.shape
        rows: list[tuple] = []
        episodes: list[tuple[float, int]] = []
        obs = self.obs
        for _ in range(steps):
            x = np.asarray(obs, dtype=np.float32).reshape(-1)
            if weights is None:
                u = rng.uniform(-1.0, 1.0, spec.action_center.shape)
            else:
                u = _numpy_policy(weights, x) + spec.noise_std * rng.standard_normal(spec.action_center.shape)
                u = np.clip(u, -1.0, 1.0)
            action = (spec.action_center + spec.action_half * u).reshape(shape).astype(np.float32)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            self.ep_return += float(reward)
            self.ep_length += 1
            nxt = np.asarray(next_obs, dtype=np.float32).reshape(-1)
            rows += self.window.push(x, action, float(reward), nxt, bool(terminated), bool(truncated))
            if terminated or truncated:
                episodes.append((self.ep_return, self.ep_length))
                self.ep_return, self.ep_length = 0.0, 0
                next_obs, _ = env.reset(seed=int(rng.integers(2**31 - 1)))
            obs = next_obs
        self.obs = obs
        if not rows:
            return None, episodes
        o, a, g, n, d = zip(*rows)
        return (np.stack(o), np.stack(a), np.asarray(g, np.float32), np.stack(n), np.asarray(d, np.float32)), episodes


# ---------------------------------------------------------------------------------- the agent
@register
class D4PG(ContinuousAgent):
    """Distributed Distributional DDPG (see the module docstring)."""

    algo = "d4pg"
    Config = D4PGConfig

    def build(self) -> None:
        cfg = self.config
        self.support = make_support(cfg.v_min, cfg.v_max, cfg.n_atoms)
        self.actor, self.actor_target = online_and_target(mlp(self.obs_dim, cfg.hidden, self.act_dim), cfg.learning_rate)
        critic = QEnsemble(1, self.obs_dim, self.act_dim, cfg.hidden, out_dim=cfg.n_atoms)
        self.critic, self.critic_target = online_and_target(critic, cfg.learning_rate)
        self.actor_numpy = NumpyMLP(self.actor.module)

    # ------------------------------------------------------------------ acting
    def policy_actions(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        u = np.tanh(self.actor_numpy(obs))
        if explore:
            u = np.clip(u + self.config.noise_std * self.rng.standard_normal(u.shape), -1.0, 1.0)
        return u

    def expected_q(self, logits: torch.Tensor) -> torch.Tensor:
        """``E[Z] = sum_j p_j z_j`` of critic logits (..., n_atoms)."""
        return (torch.softmax(logits, dim=-1) * self.support).sum(-1)

    # ------------------------------------------------------------------ learning
    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        obs = batch.obs
        with torch.no_grad():
            next_u = torch.tanh(run_mlp(self.actor_target.module, batch.next_obs))
            next_probs = torch.softmax(self.critic_target.module(batch.next_obs, next_u)[0], dim=-1)
            target = categorical_projection(next_probs, batch.rewards, batch.discounts, self.support)
        logits = self.critic.module(obs, self.normalize_actions(batch.actions))[0]
        per_sample = distributional_critic_loss(logits, target)
        critic_loss = weighted_mean(per_sample, batch.weights)
        self.critic.step(critic_loss)

        critic = self.critic.module
        critic.requires_grad_(False)
        actor_loss = -self.expected_q(critic(obs, torch.tanh(run_mlp(self.actor.module, obs)))[0]).mean()
        critic.requires_grad_(True)
        self.actor.step(actor_loss)
        self.critic_target.polyak_(self.critic, cfg.tau)
        self.actor_target.polyak_(self.actor, cfg.tau)
        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(),
                "td_error": per_sample.detach()}

    # ------------------------------------------------------------------ distributed collection
    def _actor_weights(self) -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in self.actor.module.parameters()]

    def _learn(self, total_steps: int | None, episodes: int | None, logger: RunLogger) -> None:
        cfg = self.config
        if cfg.n_workers == 0:
            super()._learn(total_steps, episodes, logger)
            return
        stop_steps = None if total_steps is None else self.num_timesteps + int(total_steps)
        stop_episodes = None if episodes is None else self.num_episodes + int(episodes)
        self.horizon = stop_steps if stop_steps is not None else self.num_timesteps + self.default_steps
        spec = ActorSpec(
            env=self._env_arg, env_kwargs=self.env_kwargs, obs_dim=self.obs_dim, action_center=self.action_center,
            action_half=self.action_half, noise_std=cfg.noise_std, n_step=cfg.n_step, gamma=cfg.gamma,
        )
        seeds = [int(s) for s in self.rng.integers(2**31 - 1, size=cfg.n_workers)]
        round_steps = cfg.actor_steps * cfg.n_workers
        updates_per_round = max(1, round(round_steps * abs(cfg.gradient_steps) / cfg.train_freq))
        pool = make_pool(ActorWorker, [(spec, seed) for seed in seeds], cfg.worker_backend, "d4pg", cfg.worker_timeout_s)
        try:
            while (stop_steps is None or self.num_timesteps < stop_steps) and (
                stop_episodes is None or self.num_episodes < stop_episodes
            ):
                warmup = self.num_timesteps < cfg.learning_starts
                weights = None if warmup else self._actor_weights()
                pool.submit("collect", [(cfg.actor_steps, weights)] * pool.n)
                # while the actors collect round k, learn from everything up to round k-1
                if len(self.buffer) >= max(cfg.batch_size, cfg.learning_starts):
                    self.train(updates_per_round, logger)
                before = self.num_timesteps
                self._ingest(pool.gather(), round_steps, logger)
                if cfg.eval_freq and self.num_timesteps // cfg.eval_freq > before // cfg.eval_freq:
                    self.evaluate_during_training(logger)
                self._safe_point()
        finally:
            pool.close()

    def _ingest(self, results: list[tuple], round_steps: int, logger: RunLogger) -> None:
        """Store the actors' n-step transitions (in actor order) and log their finished episodes."""
        for data, finished in results:
            if data is not None:
                self.buffer.store(*data)  # already n-step: (obs, action, G, next_obs, gamma^m (1 - term))
            for episode_return, length in finished:
                self.num_episodes += 1
                logger.episode(self.num_timesteps, episode_return, length)
        self.num_timesteps += round_steps
        if logger.unit == "step":  # an episode budget's bar moves in logger.episode
            logger.advance(round_steps)

    # ------------------------------------------------------------------ saving
    def networks(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.actor.module, "critic": self.critic.module,
                "actor_target": self.actor_target.module, "critic_target": self.critic_target.module}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor.optimizer, "critic": self.critic.optimizer}
