"""Shared machinery of the on-policy agents: vector envs, the rollout collector, normalisers.

Every policy-gradient agent (``reinforce``, ``actor_critic``, ``a2c``, ``a3c``, ``trpo``,
``ppo``) collects experience with :class:`RolloutCollector` and turns it into advantages with
:func:`compute_gae` (the PPO core's GAE), so the subtle parts live in one place:

Autoreset. Vector envs run in gymnasium's ``SAME_STEP`` autoreset mode: the step that ends an
episode already returns the *next* episode's first observation, and the last observation of the
finished episode arrives in ``info["final_obs"]``. The collector therefore records, per step,
``next_values[t] = V(s_{t+1})`` -- the next row's value, or ``V(final_obs)`` where the episode was
*truncated* (a time limit is not the end of the task: bootstrap). Terminated steps are not
bootstrapped (``terminated`` zeroes the term in GAE) and ``episode_end`` stops the advantage
recursion at both kinds of ends. Every recorded step is a real transition (no reset steps to mask).

Resuming. A checkpoint holds everything the collector carries between rollouts: each env's
current episode (how it began and its actions, recorded by
:class:`~classic_rl.env_utils.EpisodeRecorder` and replayed on load), the last observations,
episode returns and lengths, the action generator and the reward normaliser's running returns.
Training resumed from it takes the same steps as the uninterrupted run.

Normalisation. Optional running-mean/std normalisation of observations and of rewards
(rewards are divided by the std of the discounted return, as SB3's ``VecNormalize``). Their
statistics are part of the agent's saved state, so a loaded agent acts exactly as it did.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from classic_rl.agents.base import Agent
from classic_rl.core.advantages import gae
from classic_rl.env_utils import VEC_ENV_KINDS, EpisodeRecorder, make_vector_env
from classic_rl.fused import DEFAULT_UPDATE_BACKEND, resolve_update_backend
from classic_rl.fused.adam import make_adam
from classic_rl.logger import RunLogger
from classic_rl.nets import clip_grad_norm_flat, flat_parameters, zero_flat_grad_
from classic_rl.policies import ActorCritic, PolicyConfig, obs_to_numpy, obs_to_tensor

__all__ = [
    "OnPolicyAgent",
    "OnPolicyConfig",
    "Rollout",
    "RolloutCollector",
    "RunningMeanStd",
    "compute_gae",
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
    """'sync' (one process, best for cheap envs) or 'async' (a process per env)."""
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
        if self.vec_env not in VEC_ENV_KINDS:
            raise ValueError(f"vec_env={self.vec_env!r} is not valid; use one of {', '.join(VEC_ENV_KINDS)}")
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


# ----------------------------------------------------------------------------- normalisation
class RunningMeanStd:
    """Running mean and variance of a stream of batches (Chan et al.'s parallel update)."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = float(epsilon)

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch, dtype=np.float64)
        b_mean, b_var, b_count = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var = m2 / total
        self.count = total

    def normalize(self, x: np.ndarray, clip: float) -> np.ndarray:
        return np.clip((x - self.mean) / np.sqrt(self.var + 1e-8), -clip, clip).astype(np.float32)

    def state(self, prefix: str) -> dict[str, Tensor]:
        return {
            f"{prefix}.mean": torch.as_tensor(self.mean),
            f"{prefix}.var": torch.as_tensor(self.var),
            f"{prefix}.count": torch.tensor(self.count, dtype=torch.float64),
        }

    def load(self, tensors: dict[str, Tensor], prefix: str) -> None:
        if f"{prefix}.mean" in tensors:
            self.mean = tensors[f"{prefix}.mean"].numpy().astype(np.float64)
            self.var = tensors[f"{prefix}.var"].numpy().astype(np.float64)
            self.count = float(tensors[f"{prefix}.count"])


class RewardScaler:
    """Scale rewards by the std of the running discounted return ``R <- gamma * R + r``."""

    def __init__(self, num_envs: int, gamma: float, clip: float) -> None:
        self.rms = RunningMeanStd(())
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.gamma, self.clip = gamma, clip

    def __call__(self, rewards: np.ndarray, ends: np.ndarray) -> np.ndarray:
        self.returns = self.returns * self.gamma + rewards
        self.rms.update(self.returns)
        self.returns[ends] = 0.0
        return np.clip(rewards / np.sqrt(self.rms.var + 1e-8), -self.clip, self.clip)


# ----------------------------------------------------------------------------- rollouts
@dataclass
class Rollout:
    """``num_envs`` trajectories of ``T`` steps; every tensor is ``(num_envs, T, ...)``."""

    obs: Tensor
    """Observations as the policy saw them (normalised when that is on)."""
    actions: Tensor
    """Raw action samples (what ``dist.log_prob`` takes)."""
    logprobs: Tensor
    values: Tensor
    rewards: Tensor
    """Rewards used for learning (scaled when reward normalisation is on)."""
    next_values: Tensor
    """``V(s_{t+1})``; ``V(final_obs)`` on truncation; unused (0) after a termination."""
    terminated: Tensor
    episode_end: Tensor
    """terminated or truncated."""
    mask: Tensor
    """1 for recorded transitions that count; 0 for cut-off steps (complete-episode mode)."""
    episode_step: Tensor
    """t, the index of the step within its episode (for REINFORCE's gamma^t)."""
    num_steps: int
    """Environment steps taken, summed over envs."""
    num_episodes: int
    """Episodes that finished during the rollout."""
    masked: bool = False
    """Whether any step has mask 0 (else losses may skip the mask: fewer tensor ops)."""

    @property
    def loss_mask(self) -> Tensor | None:
        """``mask`` flattened to ``(num_envs * T,)``, or None when every step counts."""
        return self.mask.flatten() if self.masked else None


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


class RolloutCollector:
    """Steps a vector env with a policy and returns :class:`Rollout` batches.

    The hot path is numpy only: the policy acts through its :class:`~classic_rl.policies.NumpyActor`
    (numpy views of the current weights, ~2x faster than torch calls on small batches), episode
    bookkeeping stays in numpy, and torch sees one stacked batch per rollout. Finished episodes
    (their raw, unnormalised returns) go to ``logger.episode``.
    """

    def __init__(
        self,
        envs: gym.vector.VectorEnv,
        policy: ActorCritic,
        seed: int,
        obs_rms: RunningMeanStd | None = None,
        reward_scaler: RewardScaler | None = None,
        clip_obs: float = 10.0,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.envs, self.policy = envs, policy
        self.num_envs = envs.num_envs
        self.obs_space = envs.single_observation_space
        self.obs_rms, self.reward_scaler, self.clip_obs = obs_rms, reward_scaler, clip_obs
        self.rng = np.random.default_rng(seed)
        self.total_steps = 0
        self._ep_return = np.zeros(self.num_envs, dtype=np.float64)
        self._ep_len = np.zeros(self.num_envs, dtype=np.int64)
        if state is not None:  # a checkpoint's collector: no reset, no normaliser update
            self.load_state_dict(state)
            return
        obs, _ = envs.reset(seed=seed)
        self._obs = np.array(obs)
        if self.obs_rms is not None:
            self.obs_rms.update(self._obs)

    def state_dict(self) -> dict[str, Any]:
        """What the collector carries between rollouts (tensors and plain containers only).

        The envs must be wrapped in :class:`~classic_rl.env_utils.EpisodeRecorder`.
        """
        episodes = []
        for seed, rng_state, actions in self.envs.call("episode_record"):
            episodes.append({
                "seed": seed, "rng_state": rng_state,
                "actions": torch.from_numpy(np.stack([np.asarray(a) for a in actions])) if actions else None,
            })
        return {
            "episodes": episodes,
            "obs": torch.from_numpy(np.array(self._obs)),
            "ep_return": torch.from_numpy(self._ep_return.copy()),
            "ep_len": torch.from_numpy(self._ep_len.copy()),
            "total_steps": int(self.total_steps),
            "rng": self.rng.bit_generator.state,
            "reward_returns": (torch.from_numpy(self.reward_scaler.returns.copy())
                               if self.reward_scaler is not None else None),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild every env's current episode by replaying it, and take over the counters."""
        plans = [(e["seed"], e["rng_state"], [] if e["actions"] is None else list(e["actions"].numpy()))
                 for e in state["episodes"]]
        self._obs = state["obs"].numpy().copy()
        self._ep_return = state["ep_return"].numpy().copy()
        self._ep_len = state["ep_len"].numpy().copy()
        self.total_steps = int(state["total_steps"])
        self.envs.set_attr("restore_plan", plans)
        try:
            replayed = np.array(list(self.envs.call("restore_planned")))
            exact = replayed.shape == self._obs.shape and np.array_equal(replayed, self._obs)
        except RuntimeError:  # an episode ended early while replaying
            exact = False
        if not exact:  # keep the learning; only the unfinished episodes are cut short
            warnings.warn(
                "The environments' current episodes could not be rebuilt exactly (the environment is not "
                "deterministic given its random generator); training continues on fresh episodes, so its "
                "numbers will differ from an uninterrupted run.", RuntimeWarning, stacklevel=2,
            )
            obs, _ = self.envs.reset(seed=int(state["total_steps"]) + 7919)
            self._obs = np.array(obs)
            self._ep_return[:] = 0.0
            self._ep_len[:] = 0
        self.rng.bit_generator.state = state["rng"]
        if self.reward_scaler is not None and state.get("reward_returns") is not None:
            self.reward_scaler.returns = state["reward_returns"].numpy().copy()

    def policy_input(self, obs: np.ndarray, update: bool = False) -> np.ndarray:
        """Observations -> the policy's float32 input (normalised with the running stats if enabled)."""
        if self.obs_rms is not None:
            if update:
                self.obs_rms.update(obs)
            obs = self.obs_rms.normalize(obs, self.clip_obs)
        return obs_to_numpy(obs, self.obs_space)

    def close(self) -> None:
        self.envs.close()

    def collect(
        self,
        n_steps: int | None = None,
        logger: RunLogger | None = None,
        n_episodes: int | None = None,
        max_steps: int | None = None,
    ) -> Rollout:
        """Run ``n_steps`` steps in every env, or -- with ``n_episodes`` -- until that many
        episodes have finished (complete-episode mode, REINFORCE).

        Complete-episode mode starts from fresh episodes and masks out the unfinished tail of
        each env (``mask = 0``); ``max_steps`` caps its length (the tail is then masked too).
        """
        if (n_steps is None) == (n_episodes is None):
            raise ValueError("collect() needs exactly one of n_steps or n_episodes")
        episodes_mode = n_episodes is not None
        if episodes_mode and self._ep_len.any():
            self._restart()
        cols, final, finished, last_value, boot = self._run(n_steps, n_episodes, max_steps, logger)
        return self._assemble(cols, final, finished, last_value, boot, episodes_mode)

    def _run(self, n_steps, n_episodes, max_steps, logger):
        """The stepping loop of :meth:`collect`: per-step columns, truncations, bootstraps."""
        actor, envs, N, rng = self.policy.numpy_actor(), self.envs, self.num_envs, self.rng
        cols: dict[str, list] = {
            k: [] for k in ("obs", "actions", "logprobs", "values", "rewards", "term", "trunc", "t")
        }
        final: list[tuple[int, int, np.ndarray]] = []  # (t, env, final obs) of truncated episodes
        finished = 0
        t = 0
        x = self.policy_input(self._obs)
        while True:
            raw, logp, value = actor.act(x, rng)
            cols["obs"].append(x)
            cols["actions"].append(raw)
            cols["logprobs"].append(logp)
            cols["values"].append(value)
            cols["t"].append(self._ep_len.copy())
            next_obs, reward, term, trunc, info = envs.step(actor.to_env(raw))
            reward = np.asarray(reward, dtype=np.float64)
            ends = np.logical_or(term, trunc)
            self._ep_return += reward
            self._ep_len += 1
            self.total_steps += N
            if ends.any():
                for i in np.flatnonzero(ends):
                    finished += 1
                    if logger is not None:
                        logger.episode(self.total_steps, self._ep_return[i], int(self._ep_len[i]))
                    if trunc[i] and not term[i]:
                        final.append((t, int(i), info["final_obs"][i]))
                self._ep_return[ends] = 0.0
                self._ep_len[ends] = 0
            if self.reward_scaler is not None:
                reward = self.reward_scaler(reward, ends)
            cols["rewards"].append(reward)
            cols["term"].append(np.asarray(term))
            cols["trunc"].append(np.asarray(trunc))
            self._obs = np.array(next_obs)
            x = self.policy_input(self._obs, update=True)
            t += 1
            if n_episodes is not None:
                if finished >= n_episodes or (max_steps is not None and t >= max_steps):
                    break
            elif t >= n_steps:
                break
        last_value = actor.value(x)
        boot = actor.value(self.policy_input(np.stack([f[2] for f in final]))) if final else None
        return cols, final, finished, last_value, boot

    def _assemble(self, cols, final, finished, last_value, boot, episodes_mode) -> Rollout:
        """Stack the per-step columns into ``(num_envs, T)`` tensors and fill ``next_values``."""
        N, T = self.num_envs, len(cols["values"])
        values_np = np.stack(cols["values"], 1)
        next_np = np.empty_like(values_np)
        next_np[:, :-1] = values_np[:, 1:]
        next_np[:, -1] = last_value
        for (t, i, _), v in zip(final, boot if final else ()):
            next_np[i, t] = v
        values, next_values = torch.from_numpy(values_np), torch.from_numpy(next_np)
        term_np, trunc_np = np.stack(cols["term"], 1), np.stack(cols["trunc"], 1)
        term = torch.from_numpy(term_np).to(values.dtype)
        episode_end = torch.from_numpy(term_np | trunc_np).to(values.dtype)
        next_values = next_values * (1.0 - term)
        mask = torch.ones(N, T)
        masked = False
        if episodes_mode:  # keep only finished episodes: steps up to each env's last end
            for i in range(N):
                done_at = np.flatnonzero(term_np[i] | trunc_np[i])
                start = done_at[-1] + 1 if done_at.size else 0
                mask[i, start:] = 0.0
                masked = masked or start < T
        return Rollout(
            obs=torch.from_numpy(np.stack(cols["obs"], 1)),
            actions=torch.from_numpy(np.stack(cols["actions"], 1)),
            logprobs=torch.from_numpy(np.stack(cols["logprobs"], 1)),
            values=values,
            rewards=torch.from_numpy(np.stack(cols["rewards"], 1)).to(torch.float32),
            next_values=next_values,
            terminated=term,
            episode_end=episode_end,
            mask=mask,
            episode_step=torch.from_numpy(np.stack(cols["t"], 1)),
            num_steps=N * T,
            num_episodes=finished,
            masked=masked,
        )

    def _restart(self) -> None:
        """Begin fresh episodes in every env (the unfinished ones were cut off by a rollout)."""
        obs, _ = self.envs.reset()
        self._obs = np.array(obs)
        self._ep_return[:] = 0.0
        self._ep_len[:] = 0


# ----------------------------------------------------------------------------- base agent
class OnPolicyAgent(Agent):
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
        self.eval_history: list[tuple[int, float, float]] = []
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

    def maybe_evaluate(self, previous_steps: int, logger: RunLogger | None) -> None:
        """Evaluate when the step count has crossed a multiple of ``eval_freq`` since ``previous_steps``."""
        every = self.config.eval_freq
        if every and self.num_timesteps // every > previous_steps // every:
            self.evaluate_during_training(logger)

    def evaluate_during_training(self, logger: RunLogger | None = None) -> tuple[float, float]:
        """Greedy evaluation on fresh episodes (seeds ``eval_seed``...), kept in ``eval_history``
        and logged as ``eval/return_mean``."""
        from classic_rl.evaluation import evaluate

        cfg = self.config
        mean, std = evaluate(self, self._env_arg, episodes=cfg.eval_episodes, seed=cfg.eval_seed)
        self.eval_history.append((self.num_timesteps, mean, std))
        if logger is not None:
            logger.scalars({"eval/return_mean": mean, "eval/return_std": std}, self.num_timesteps)
        return mean, std

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
        return {**super().extra_state(), "eval_history": [list(e) for e in self.eval_history],
                "n_updates": self.n_updates}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.eval_history = [tuple(e) for e in state.get("eval_history", [])]
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
