"""The DQN family, from DQN to Rainbow: one agent whose components are switched by config.

=============  ======  =======  ==========  ====  =====  ======
name           double  dueling  replay      C51   noisy  n_step
=============  ======  =======  ==========  ====  =====  ======
dqn                                uniform                    1
double_dqn       x                 uniform                    1
dueling_dqn              x         uniform                    1
per_dqn                       proportional                    1
c51                                uniform     x              1
noisy_dqn                          uniform           x        1
rainbow          x       x    proportional     x     x        3
=============  ======  =======  ==========  ====  =====  ======

The update (one screen; names as in the course)::

    q        = Q(s, a)                                         online net
    a_star   = argmax_a' Q(s', a')     with the online net (double) or the target net (DQN)
    td_target = r + discount * Q_target(s', a_star)            discount = gamma^n (1 - terminated)
    loss     = mean_i w_i * huber(q_i - td_target_i)           w_i = 1, or PER importance weights

C51 replaces the scalar Q by a categorical distribution over ``n_atoms`` fixed returns and the
regression by the cross-entropy to the projected target distribution
(:func:`classic_rl.core.distributional.categorical_projection`). Noisy nets replace epsilon-greedy
by learned parameter noise (the presets set epsilon to 0). Prioritized replay takes ``|q - y|``
(or the C51 cross-entropy) as the new priority of each sampled transition.

:meth:`DQN.autograd_loss_and_gradient` is the definition of the loss and its gradient. With
``update_backend: fused`` (the default) plain MLP heads with uniform replay use
:class:`classic_rl.fused.updates.FusedQRegression` instead (the same gradient written out by hand,
equal up to float rounding) and every variant steps Adam through :class:`classic_rl.fused.adam.FlatAdam`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from classic_rl.agents.base import register, space_kind
from classic_rl.agents.off_policy import OffPolicyAgent, OffPolicyConfig, linear_schedule
from classic_rl.buffers import Batch
from classic_rl.core.distributional import categorical_projection, make_support
from classic_rl.fused import DEFAULT_UPDATE_BACKEND, resolve_update_backend, select_update
from classic_rl.fused.adam import make_adam
from classic_rl.fused.updates import FusedQRegression
from classic_rl.nets import QNetwork, clip_grad_norm_flat, flat_parameters, is_image_space, zero_flat_grad_

LOSSES = ("huber", "mse")


@dataclass
class DQNConfig(OffPolicyConfig):
    """DQN settings; defaults follow Stable-Baselines3's DQN (with a smaller generic buffer)."""

    learning_rate: float = 1e-4
    adam_eps: float = 1e-8
    max_grad_norm: float = 10.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    loss: str = "huber"
    """huber (smooth L1, as SB3 and the Nature paper's error clipping) or mse ((Q - y)^2)."""
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "relu"
    exploration_fraction: float = 0.1
    """Fraction of the training budget over which epsilon decays linearly."""
    exploration_initial_eps: float = 1.0
    exploration_final_eps: float = 0.05
    target_update_interval: int = 10_000
    learning_starts: int = 100
    double: bool = False
    """Double DQN: the online net picks the next action, the target net values it."""
    dueling: bool = False
    """Dueling head: Q = V + A - mean(A)."""
    distributional: bool = False
    """C51: a categorical return distribution on n_atoms atoms in [v_min, v_max]."""
    n_atoms: int = 51
    v_min: float = -10.0
    v_max: float = 10.0
    noisy: bool = False
    """Factorised Gaussian noisy linear layers (explore through weight noise)."""
    noisy_std: float = 0.5
    update_backend: str = DEFAULT_UPDATE_BACKEND
    """``fused``: the gradient by hand for plain MLP Q-nets with uniform replay, FlatAdam for all
    (:mod:`classic_rl.fused`); ``autograd``: the plain torch update. The same numbers up to float
    rounding; see docs/benchmarks.md for the speed."""
    analytic_grad: bool | None = None
    """Deprecated alias of ``update_backend`` (true = fused, false = autograd)."""

    def validate(self) -> None:
        super().validate()
        resolve_update_backend(self)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        for name in ("exploration_initial_eps", "exploration_final_eps", "exploration_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.distributional:
            make_support(self.v_min, self.v_max, self.n_atoms)  # raises on a bad support


def td_target(
    rewards: torch.Tensor,
    discounts: torch.Tensor,
    next_q_target: torch.Tensor,
    next_q_online: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y = r + discount * Q_target(s', a*)``.

    ``a* = argmax_a Q_target(s', a)`` (DQN: the target net both picks and values, which
    over-estimates), or ``a* = argmax_a Q_online(s', a)`` when ``next_q_online`` is given
    (Double DQN: decoupling selection from evaluation removes most of that bias).
    """
    if next_q_online is None:
        next_value = next_q_target.max(dim=1).values
    else:
        next_value = next_q_target.gather(1, next_q_online.argmax(dim=1, keepdim=True)).squeeze(1)
    return rewards + discounts * next_value


@register
class DQN(OffPolicyAgent):
    """DQN (Mnih et al. 2015) and, through its config, every extension up to Rainbow.

    Registered as ``dqn``; the other names are presets: subclasses that only change defaults.
    """

    algo = "dqn"
    Config = DQNConfig
    family = "value-based"
    action_kinds = ("discrete",)
    default_steps = 50_000

    def check_env(self, env: gym.Env) -> None:
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ValueError(
                f"DQN needs a discrete action space: {self.algo} picks argmax_a Q(s, a) over a finite set, but "
                f"{self.env_id} has a {space_kind(env.action_space)} one ({env.action_space}). For continuous "
                f"actions use ddpg, td3 or sac (see classic-rl list)."
            )

    def setup(self) -> None:
        super().setup()
        cfg = self.config
        self.n_actions = int(self.env.action_space.n)
        self.action_start = int(self.env.action_space.start)
        support = make_support(cfg.v_min, cfg.v_max, cfg.n_atoms) if cfg.distributional else None
        net_kwargs = dict(
            obs_shape=self.obs_shape, n_actions=self.n_actions, hidden=cfg.hidden, act=cfg.activation,
            dueling=cfg.dueling, noisy=cfg.noisy, noisy_std=cfg.noisy_std,
            n_atoms=cfg.n_atoms if cfg.distributional else 1, support=support,
            image=is_image_space(self.env.observation_space),
        )
        self.q_net = QNetwork(**net_kwargs)
        self.target_net = QNetwork(**net_kwargs)
        self.target_net.load_state_dict(self.q_net.state_dict())
        self.target_net.requires_grad_(False)
        self.q_flat = flat_parameters(self.q_net)
        self.target_flat = flat_parameters(self.target_net)
        backend = resolve_update_backend(cfg)
        # one flat tensor: Adam, clipping and target copies are a single op each
        self.optimizer = make_adam(self.q_flat, lr=cfg.learning_rate, eps=cfg.adam_eps, backend=backend)
        self.support = support
        fused = (lambda: FusedQRegression(self)) if FusedQRegression.applies(self) else None
        self.loss_and_gradient = select_update(backend, self.autograd_loss_and_gradient, fused)
        self._noisy_snapshot: tuple[int, list[np.ndarray]] = (-1, [])

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"q_net": self.q_net, "target_net": self.target_net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"q": self.optimizer}

    def target_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.q_flat, self.target_flat)]

    # ------------------------------------------------------------------ acting
    def epsilon(self) -> float:
        cfg = self.config
        return linear_schedule(cfg.exploration_initial_eps, cfg.exploration_final_eps, cfg.exploration_fraction,
                               self.num_timesteps, self.horizon)

    def schedule_values(self) -> dict[str, float]:
        return {**super().schedule_values(), "train/epsilon": self.epsilon()}

    def _greedy(self, obs: np.ndarray, noise: bool = True) -> np.ndarray:
        """argmax_a Q(s, a) for a batch; ``noise=False`` uses noisy layers' mean weights."""
        net = self.q_net
        if not net.numpy_ok:
            with torch.no_grad():
                return net.q_values(torch.from_numpy(obs)).argmax(dim=1).numpy() + self.action_start
        params = None
        if net.noisy and noise:  # weights and noise only change in updates: snapshot them once per round
            if self._noisy_snapshot[0] != self.n_updates:
                self._noisy_snapshot = (self.n_updates, net.noisy_params_numpy())
            params = self._noisy_snapshot[1]
        return net.q_values_numpy(obs, params).argmax(axis=1) + self.action_start

    def select_action(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """Epsilon-greedy on Q (the random draw comes first, so exploring skips the forward pass).

        Noisy nets keep the noise sampled at the last update, so one noise sample drives the
        ``train_freq`` steps between training rounds (as in Kaixhin's Rainbow, which resamples
        every ``replay_frequency`` steps): consistent exploration at a fraction of the cost.
        """
        n = len(obs)
        eps = self.epsilon() if explore else 0.0
        if eps > 0.0 and n == 1:
            if self.rng.random() < eps:
                return self.rng.integers(self.n_actions, size=1) + self.action_start
            eps = 0.0
        actions = self._greedy(obs, noise=explore)  # noisy nets explore with the last update's noise
        if eps > 0.0:
            explore_mask = self.rng.random(n) < eps
            actions = np.where(explore_mask, self.rng.integers(self.n_actions, size=n) + self.action_start, actions)
        return actions

    def act(self, obs, deterministic: bool = True) -> int:
        """Action for one raw observation: greedy (noise off) or, with ``deterministic=False``, exploring."""
        x = self.encode(obs)[None]
        if not deterministic:
            return int(self.select_action(x, explore=True)[0])
        if not self.config.noisy or self.q_net.numpy_ok:
            return int(self._greedy(x, noise=False)[0])
        self.q_net.eval()  # noisy layers use their mean weights
        try:
            return int(self._greedy(x)[0])
        finally:
            self.q_net.train()

    # ------------------------------------------------------------------ learning
    @torch.no_grad()
    def compute_targets(self, batch: Batch) -> torch.Tensor:
        """TD targets ``(B,)``, or for C51 the projected target distributions ``(B, n_atoms)``."""
        cfg = self.config
        if not cfg.distributional:
            next_q_online = self.q_net(batch.next_obs) if cfg.double else None
            return td_target(batch.rewards, batch.discounts, self.target_net(batch.next_obs), next_q_online)
        next_probs = self.target_net(batch.next_obs).softmax(dim=-1)  # (B, A, K)
        next_q = self.q_net.q_values(batch.next_obs) if cfg.double else (next_probs * self.support).sum(dim=-1)
        next_dist = next_probs[torch.arange(len(next_q)), next_q.argmax(dim=1)]  # (B, K)
        return categorical_projection(next_dist, batch.rewards, batch.discounts, self.support)

    def round_targets(self, batch: Batch) -> torch.Tensor | None:
        """Targets of a whole round when they depend on the (fixed) target net only: not with
        double Q (the online net, updated every step, picks a*) or noisy nets (fresh noise per update)."""
        cfg = self.config
        if cfg.double or cfg.noisy:
            return None
        return self.compute_targets(batch)

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        if cfg.noisy:
            self.q_net.reset_noise()
            self.target_net.reset_noise()
        actions = batch.actions - self.action_start if self.action_start else batch.actions
        targets = batch.targets if batch.targets is not None else self.compute_targets(batch)
        loss, td_error = self.loss_and_gradient(batch, actions, targets)  # the backend's, chosen in setup
        grad_norm = clip_grad_norm_flat(self.q_flat, cfg.max_grad_norm)
        self.optimizer.step()
        stats = {"loss": loss.detach(), "grad_norm": grad_norm}
        if td_error is not None:
            stats["td_error"] = td_error
        return stats

    def autograd_loss_and_gradient(
        self, batch: Batch, actions: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss (module docstring) and its gradient in ``q_flat.grad``; returns ``(loss, td_error)``,
        td_error (the new priorities) only with prioritized replay."""
        cfg = self.config
        if cfg.distributional:  # cross-entropy between the projected target and p(s, a)
            log_p = self.q_net(batch.obs)[torch.arange(len(actions)), actions].log_softmax(dim=-1)
            per_sample = -(targets * log_p).sum(dim=-1)
            td_error = per_sample.detach()
            loss = per_sample.mean() if batch.weights is None else (per_sample * batch.weights).mean()
        else:
            q = self.q_net(batch.obs).gather(1, actions.unsqueeze(1)).squeeze(1)
            loss_fn = F.smooth_l1_loss if cfg.loss == "huber" else F.mse_loss
            if batch.weights is None:
                loss = loss_fn(q, targets)
            else:
                loss = (loss_fn(q, targets, reduction="none") * batch.weights).mean()
            td_error = (q - targets).detach() if self.buffer.prioritized else None
        zero_flat_grad_(self.q_flat)
        loss.backward()
        return loss, td_error


# ---------------------------------------------------------------------------------- presets
@dataclass
class DoubleDQNConfig(DQNConfig):
    double: bool = True


@register
class DoubleDQN(DQN):
    """Double DQN (van Hasselt et al. 2016)."""

    algo = "double_dqn"
    Config = DoubleDQNConfig


@dataclass
class DuelingDQNConfig(DQNConfig):
    dueling: bool = True


@register
class DuelingDQN(DQN):
    """Dueling DQN (Wang et al. 2016)."""

    algo = "dueling_dqn"
    Config = DuelingDQNConfig


@dataclass
class PERDQNConfig(DQNConfig):
    replay: str = "proportional"


@register
class PERDQN(DQN):
    """DQN with prioritized experience replay (Schaul et al. 2016); ``replay=rank`` for the rank-based kind."""

    algo = "per_dqn"
    Config = PERDQNConfig


@dataclass
class C51Config(DQNConfig):
    distributional: bool = True


@register
class C51(DQN):
    """Categorical distributional DQN (Bellemare et al. 2017)."""

    algo = "c51"
    Config = C51Config


@dataclass
class NoisyDQNConfig(DQNConfig):
    noisy: bool = True
    exploration_initial_eps: float = 0.0
    exploration_final_eps: float = 0.0


@register
class NoisyDQN(DQN):
    """DQN with noisy nets (Fortunato et al. 2018) instead of epsilon-greedy."""

    algo = "noisy_dqn"
    Config = NoisyDQNConfig


@dataclass
class RainbowConfig(DQNConfig):
    double: bool = True
    dueling: bool = True
    replay: str = "proportional"
    per_alpha: float = 0.5
    distributional: bool = True
    noisy: bool = True
    n_step: int = 3
    exploration_initial_eps: float = 0.0
    exploration_final_eps: float = 0.0
    adam_eps: float = 1.5e-4


@register
class Rainbow(DQN):
    """Rainbow (Hessel et al. 2018): double + dueling + PER + C51 + noisy nets + n-step returns."""

    algo = "rainbow"
    Config = RainbowConfig
