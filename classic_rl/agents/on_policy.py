"""The on-policy training loop and what the policy-gradient agents share.

Every policy-gradient agent (``reinforce``, ``actor_critic``, ``a2c``, ``a3c``, ``trpo``,
``ppo``) collects experience with :class:`~classic_rl.collectors.RolloutCollector` (autoreset,
bootstrapping at truncations and exact resume are explained there), stores it in a
:class:`~classic_rl.buffers.Rollout` and turns it into advantages with :func:`compute_gae` (the
core's GAE), so the subtle parts live in one place each.

Normalisation. Optional running-mean/std normalisation of observations and of rewards
(:mod:`classic_rl.normalizers`; rewards are divided by the std of the discounted return, as SB3's
``VecNormalize``). Their statistics are part of the agent's saved state, so a loaded agent acts
exactly as it did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from classic_rl.agents.base import Agent
from classic_rl.buffers import Rollout
from classic_rl.collectors import RolloutCollector
from classic_rl.core.advantages import gae
from classic_rl.env_utils import ON_POLICY_VEC_ENV_KINDS, EpisodeRecorder, make_vector_env
from classic_rl.envpool_vec import check_envpool, check_same_spaces
from classic_rl.evaluation import PeriodicEvaluation
from classic_rl.fused import DEFAULT_UPDATE_BACKEND, resolve_update_backend
from classic_rl.fused.adam import make_adam
from classic_rl.logger import RunLogger
from classic_rl.nets import clip_grad_norm_flat, flat_parameters, zero_flat_grad_
from classic_rl.normalizers import RewardScaler, RunningMeanStd
from classic_rl.policies import ActorCritic, PolicyConfig, obs_to_tensor

__all__ = [  # Rollout, RolloutCollector, RewardScaler, RunningMeanStd: re-exported from their modules
    "OnPolicyAgent",
    "OnPolicyConfig",
    "RewardScaler",
    "Rollout",
    "RolloutCollector",
    "RunningMeanStd",
    "compute_gae",
    "make_optimizer",
    "make_vector_env",
]

OPTIMIZERS = ("adam", "rmsprop")


# ----------------------------------------------------------------------------- config
@dataclass
class OnPolicyConfig(PolicyConfig):
    """Settings shared by the on-policy agents (each algorithm extends or re-defaults them)."""

    num_envs: int = 1
    """Environments stepped together (a gymnasium vector env)."""
    vec_env: str = "sync"
    """'sync' (one process, best for cheap envs), 'async' (a process per env) or 'envpool'
    (EnvPool's C++ pool: the ``envpool`` extra; see :mod:`classic_rl.envpool_vec`)."""
    gamma: float = 0.99
    gae_lambda: float = 1.0
    """GAE lambda; 1.0 gives plain n-step returns (bootstrapped at the rollout's end)."""
    learning_rate: float = 7e-4
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over the ``learn`` budget."""
    optimizer: str = "adam"
    """'adam' or 'rmsprop' (RMSprop with alpha=0.99, eps=1e-5 as in A2C / SB3)."""
    update_backend: str = DEFAULT_UPDATE_BACKEND
    """``fused``: Adam on a flat parameter tensor (PPO, A2C) steps through :class:`classic_rl.fused.adam.FlatAdam`;
    ``autograd``: ``torch.optim.Adam``. The same numbers (the gradients come from autograd either way)."""
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float | None = 0.5
    normalize_advantage: bool = False
    """Whiten advantages of each batch."""
    normalize_obs: bool = False
    """Running mean/std normalisation of observations (clipped to +-clip_obs)."""
    normalize_reward: bool = False
    """Divide rewards by the running std of the discounted return (clipped to +-clip_reward)."""
    clip_obs: float = 10.0
    clip_reward: float = 10.0
    eval_freq: int = 0
    """Greedy evaluation every this many steps during training (0 = never); see ``eval_history``."""
    eval_episodes: int = 5
    eval_seed: int = 10_000

    def validate(self) -> None:
        self.validate_policy()
        resolve_update_backend(self)
        if self.eval_freq < 0 or self.eval_episodes < 1:
            raise ValueError(
                f"eval_freq must be >= 0 and eval_episodes >= 1, got {self.eval_freq}, {self.eval_episodes}"
            )
        if self.vec_env not in ON_POLICY_VEC_ENV_KINDS:
            raise ValueError(f"vec_env={self.vec_env!r} is not valid; use one of {', '.join(ON_POLICY_VEC_ENV_KINDS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is not valid; use one of {', '.join(OPTIMIZERS)}")
        for name in ("num_envs", "n_steps", "episodes_per_update"):
            if int(getattr(self, name, 1)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(
                f"gamma and gae_lambda must lie in [0, 1], got {self.gamma} and {self.gae_lambda}"
            )
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")


# ----------------------------------------------------------------------------- rollouts
def compute_gae(rollout: Rollout, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """GAE(lambda) advantages and returns of a rollout (``lam=1``: n-step / Monte-Carlo returns)."""
    return gae(
        rollout.rewards,
        rollout.values,
        mask=rollout.mask if rollout.masked else None,
        next_values=rollout.next_values,
        terminated=rollout.terminated,
        episode_end=rollout.episode_end,
        gamma=gamma,
        lam=lam,
    )


# ----------------------------------------------------------------------------- base agent
class OnPolicyAgent(PeriodicEvaluation, Agent):
    """Base of the policy-gradient agents: builds the policy, the collector and the optimizer,
    runs the collect/update loop, acts, and saves normalisation statistics with the weights.

    Subclasses implement :meth:`update` (one learning step from a rollout) and may override
    :meth:`collect` (default: ``config.n_steps`` steps per env; REINFORCE collects complete
    episodes) and :meth:`build_optimizers`.
    """

    family = "policy-gradient"
    Config: ClassVar[type] = OnPolicyConfig
    use_critic: ClassVar[bool] = True
    log_every_steps: ClassVar[int] = 1000
    """Training statistics go to the logger at most once per this many environment steps."""
    use_flat_parameters: ClassVar[bool] = False
    """Keep the policy's parameters (and gradients) in one flat tensor (``classic_rl.nets.flat_parameters``):
    the optimizer step, gradient clipping and zeroing are then one op each instead of one per
    weight tensor -- on a 64x64 network that per-tensor overhead is a visible share of a gradient step. The
    arithmetic is the same (Adam and RMSprop are elementwise; every parameter gets a gradient)."""

    def setup(self) -> None:
        cfg = self.config
        if cfg.vec_env == "envpool":  # before anything is written: EnvPool installed, and has this env
            check_envpool(self._env_arg)
        self.policy = ActorCritic(
            self.env.observation_space, self.env.action_space, cfg, critic=self.critic_enabled()
        )
        if cfg.normalize_obs and not isinstance(self.env.observation_space, gym.spaces.Box):
            raise ValueError(
                f"normalize_obs needs a Box observation space, {self.env_id} has {self.env.observation_space}"
            )
        self.obs_rms = RunningMeanStd(self.env.observation_space.shape) if cfg.normalize_obs else None
        self.reward_scaler = (
            RewardScaler(cfg.num_envs, cfg.gamma, cfg.clip_reward) if cfg.normalize_reward else None
        )
        self.collector: RolloutCollector | None = None
        self._collector_state: dict[str, Any] | None = None  # from a checkpoint, used by the next learn
        self.n_updates = 0
        self.eval_history = []
        self.flat_params = flat_parameters(self.policy) if self.use_flat_parameters else None
        self._optimizers = self.build_optimizers()
        self._base_lrs = {name: [g["lr"] for g in opt.param_groups] for name, opt in self._optimizers.items()}

    # ------------------------------------------------------------------ hooks
    def critic_enabled(self) -> bool:
        return self.use_critic

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        params = [self.flat_params] if self.flat_params is not None else self.policy.parameters()
        cfg = self.config
        return {"optimizer": make_optimizer(cfg.optimizer, params, cfg.learning_rate, resolve_update_backend(cfg))}

    def zero_grad(self) -> None:
        """Clear the policy's gradients before a backward pass (in place when they are flat)."""
        if self.flat_params is not None:
            zero_flat_grad_(self.flat_params)  # also re-attaches grads a module.zero_grad() cut loose
        else:
            self.policy.zero_grad(set_to_none=True)

    def clip_grad_norm(self, max_norm: float | None) -> None:
        """Scale the policy's gradient to global norm at most ``max_norm`` (None: no clipping)."""
        if max_norm is None:
            return
        if self.flat_params is not None:
            clip_grad_norm_flat(self.flat_params, max_norm)
        else:
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), max_norm)

    def collect(self, collector: RolloutCollector, logger: RunLogger) -> Rollout:
        return collector.collect(self.config.n_steps, logger)

    def update(self, rollout: Rollout, progress_remaining: float) -> dict[str, float]:
        raise NotImplementedError

    # ------------------------------------------------------------------ training loop
    def make_collector(self) -> RolloutCollector:
        cfg = self.config
        envs = make_vector_env(self._env_arg, cfg.num_envs, self.env_kwargs, cfg.vec_env, wrapper=EpisodeRecorder)
        if cfg.vec_env == "envpool":
            check_same_spaces(envs, self.env, self.env_id)
        state, self._collector_state = self._collector_state, None
        return RolloutCollector(envs, self.policy, self.seed, self.obs_rms, self.reward_scaler, cfg.clip_obs,
                                state=state)

    def _learn(self, total_steps: int | None, episodes: int | None, logger: RunLogger) -> None:
        if self.collector is None:
            self.collector = self.make_collector()
        # Progress (for annealing) is measured from the budget's origin, which a resumed run keeps.
        origin_steps, origin_episodes = self.learn_origin
        stop_steps = None if total_steps is None else self.num_timesteps + total_steps
        stop_episodes = None if episodes is None else self.num_episodes + episodes
        next_log = self.num_timesteps
        while True:
            if stop_steps is not None:
                if self.num_timesteps >= stop_steps:
                    break
                done = (self.num_timesteps - origin_steps) / max(stop_steps - origin_steps, 1)
            else:
                if self.num_episodes >= stop_episodes:
                    break
                done = (self.num_episodes - origin_episodes) / max(stop_episodes - origin_episodes, 1)
            remaining = 1.0 - done
            self.set_learning_rate(remaining)
            rollout = self.collect(self.collector, logger)
            self.num_timesteps += rollout.num_steps
            self.num_episodes += rollout.num_episodes
            if logger.unit == "step":
                logger.advance(rollout.num_steps)
            stats = self.update(rollout, remaining)
            self.n_updates += 1
            if self.num_timesteps >= next_log:  # TensorBoard writes cost more than an A2C update
                logger.scalars(stats, self.num_timesteps)
                next_log = self.num_timesteps + self.log_every_steps
            self.maybe_evaluate(self.num_timesteps - rollout.num_steps, logger)
            self._safe_point(stats, self.n_updates)

    def set_learning_rate(self, progress_remaining: float) -> None:
        """Linear annealing: ``lr = lr0 * progress_remaining`` when ``anneal_lr`` is on."""
        if not self.config.anneal_lr:
            return
        for name, opt in self._optimizers.items():
            for group, lr0 in zip(opt.param_groups, self._base_lrs[name]):
                group["lr"] = lr0 * progress_remaining

    # ------------------------------------------------------------------ acting and state
    def act(self, obs: Any, deterministic: bool = True) -> Any:
        """Action for one observation (or a batch with a leading dimension)."""
        arr = np.asarray(obs)
        single = arr.shape == self.env.observation_space.shape
        batch = arr[None] if single else arr
        if self.obs_rms is not None:
            batch = self.obs_rms.normalize(batch, self.config.clip_obs)
        with torch.no_grad():
            dist = self.policy.distribution(obs_to_tensor(batch, self.env.observation_space))
            raw = dist.mode() if deterministic else dist.sample()
        actions = self.policy.to_env(raw)
        if not single:
            return actions
        return int(actions[0]) if self.policy.discrete else actions[0]

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return dict(self._optimizers)

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "n_updates": self.n_updates}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.n_updates = int(state.get("n_updates", 0))

    def training_state(self) -> dict[str, Any]:
        state = super().training_state()
        if self.collector is not None:
            state["collector"] = self.collector.state_dict()
        elif self._collector_state is not None:
            state["collector"] = self._collector_state
        return state

    def load_training_state(self, state: dict[str, Any]) -> None:
        super().load_training_state(state)
        # Rebuilt when training continues (not for evaluation): replaying episodes costs env steps.
        self._collector_state = state.get("collector")

    def state_tensors(self) -> dict[str, Tensor]:
        tensors = super().state_tensors()
        if self.obs_rms is not None:
            tensors.update(self.obs_rms.state("obs_rms"))
        if self.reward_scaler is not None:
            tensors.update(self.reward_scaler.rms.state("reward_rms"))
        return tensors

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        stats = ("obs_rms.", "reward_rms.")
        super().load_state_tensors({k: v for k, v in tensors.items() if not k.startswith(stats)})
        if self.obs_rms is not None:
            self.obs_rms.load(tensors, "obs_rms")
        if self.reward_scaler is not None:
            self.reward_scaler.rms.load(tensors, "reward_rms")


def make_optimizer(name: str, params, lr: float, backend: str = "fused") -> torch.optim.Optimizer:
    """Adam (eps=1e-5, as CleanRL/SB3 PPO) or RMSprop (alpha=0.99, eps=1e-5, as SB3 A2C).

    Adam uses the fused kernel (one call for all parameters: small networks are dominated by
    per-tensor overhead) -- for one flat parameter tensor and the ``fused`` backend through
    :class:`~classic_rl.fused.adam.FlatAdam`, the same kernel without ``torch.optim``'s per-step
    bookkeeping --, RMSprop, which has no fused
    kernel, the multi-tensor one.
    """
    params = list(params)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.99, eps=1e-5, foreach=True)
    if name == "adam":
        if len(params) == 1:
            return make_adam(params[0], lr=lr, eps=1e-5, backend=backend)
        return torch.optim.Adam(params, lr=lr, eps=1e-5, fused=True)
    raise ValueError(f"optimizer={name!r} is not valid; use one of {', '.join(OPTIMIZERS)}")
