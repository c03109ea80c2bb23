"""The one off-policy training loop: act, store in replay, learn from minibatches, sync targets.

Every replay-based agent (the DQN family, DDPG, TD3, SAC, SAC-discrete, D4PG, MADDPG) subclasses
:class:`OffPolicyAgent` and supplies only its own parts:

- ``setup()``: call ``super().setup()`` (environments and replay), then build networks and
  optimizers;
- :meth:`OffPolicyAgent.select_action` ``(obs, explore) -> actions`` for a batch of observations;
- :meth:`OffPolicyAgent.train_step` ``(batch) -> stats``: one gradient update; return a
  ``"td_error"`` entry (per sample) to feed prioritized replay;
- :meth:`OffPolicyAgent.target_pairs`: (online, target) tensors that :meth:`update_targets`
  copies (``tau = 1``) or averages (``target <- (1 - tau) target + tau online``).

The loop, per environment step (``n_envs`` environments step together)::

    a = random before learning_starts, else select_action(obs, explore=True)
    step the envs; store (s, a, r, s', terminated, truncated) in replay
    every target_update_interval steps: update_targets()     (same order as Stable-Baselines3)
    every train_freq steps after learning_starts: gradient_steps x train_step(sample(batch_size))
    every eval_freq steps: greedy evaluation, logged as eval/return_mean

Time limits: a truncated episode still bootstraps from its real final observation (it is what
``s'`` holds in replay); only a terminated one does not. Each environment is reset with a seed
drawn from the agent's numpy generator, and the actions of the current episodes are kept, so
a saved agent rebuilds the exact environment state on load by replaying them: together with the
replay contents, optimizer, torch and numpy RNG states, training resumed from a checkpoint
produces the same weights as an uninterrupted run with the same seed.

Environments are stepped by :class:`~classic_rl.collectors.EnvRunner` (``vec_env='none'``, the
default) or :class:`~classic_rl.collectors.VectorEnvRunner` (``sync``/``async``); all three give
the same transitions and resume exactly (see :mod:`classic_rl.collectors`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from classic_rl.agents.base import Agent
from classic_rl.buffers import REPLAY_KINDS, Batch, make_replay_buffer
from classic_rl.checkpoint import InexactResumeWarning
from classic_rl.collectors import EnvRunner, VectorEnvRunner
from classic_rl.env_utils import VEC_ENV_KINDS, EpisodeReplay, make_env, make_vector_env
from classic_rl.evaluation import PeriodicEvaluation
from classic_rl.logger import RunLogger

ROUND_ROWS = 16_384
"""Most transitions drawn from replay at once for one training round."""
OFF_POLICY_VEC_ENVS = ("none", *VEC_ENV_KINDS)
"""Values of ``OffPolicyConfig.vec_env``: the project's EnvRunner or a gymnasium vector env."""


@dataclass
class OffPolicyConfig:
    """Settings every replay-based agent shares (step counts are environment steps, summed over envs)."""

    buffer_size: int = 100_000
    """Replay capacity in transitions."""
    batch_size: int = 64
    learning_starts: int = 1000
    """Random actions and no updates before this many steps."""
    train_freq: int = 4
    """Update every ``train_freq`` steps of each environment."""
    gradient_steps: int = 1
    """Updates per training round; -1 means as many as environment steps collected in the round."""
    gamma: float = 0.99
    n_step: int = 1
    """Rewards summed per stored transition before bootstrapping (n-step returns)."""
    tau: float = 1.0
    """Target update rate: 1 copies the online weights, < 1 is Polyak averaging."""
    target_update_interval: int = 1
    """Steps between target updates."""
    replay: str = "uniform"
    """uniform, proportional (prioritized, sum tree) or rank (prioritized, p_i = 1/rank(i))."""
    per_alpha: float = 0.6
    """How much prioritization: P(i) ~ p_i^alpha (0 = uniform)."""
    per_beta0: float = 0.4
    """Initial importance-sampling exponent, annealed linearly to 1 over the run."""
    per_eps: float = 1e-6
    """Added to |TD error| so no transition gets zero priority."""
    rank_sort_every: int = 100
    """Rank-based replay: re-sort priorities every this many minibatches (1 = exact)."""
    n_envs: int = 1
    """Environments stepped together."""
    vec_env: str = "none"
    """How the ``n_envs`` environments run: none (a list stepped in turn, the default), sync (a
    gymnasium SyncVectorEnv: the same, in one process) or async (AsyncVectorEnv: one process per
    env, worth it when a step is expensive: MuJoCo, Atari). All three give the same transitions."""
    eval_freq: int = 0
    """Greedy evaluation every this many steps (0 = never during training)."""
    eval_episodes: int = 5
    eval_seed: int = 10_000
    log_interval: int = 1000
    """Steps between training-scalar logs (TensorBoard ``train/*``)."""
    checkpoint_buffer: bool = True
    """Save the replay buffer in every checkpoint, so a resume continues exactly. It is most of a
    checkpoint (gigabytes for Atari frames); false leaves it out: a resumed run then refills an
    empty buffer for ``max(learning_starts, batch_size)`` steps before it updates again, and its
    numbers differ from an uninterrupted run."""
    torch_threads: int = 0
    """torch CPU threads for this process; 0 (default) keeps the process's count, which
    ``classic-rl`` sets once per run (``--num_threads``, ``OMP_NUM_THREADS``, else one per process:
    ``classic_rl.threads``)."""

    def validate(self) -> None:
        positive = ("buffer_size", "batch_size", "train_freq", "n_step", "target_update_interval", "n_envs",
                    "eval_episodes", "log_interval", "rank_sort_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("learning_starts", "eval_freq", "torch_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.gradient_steps == 0 or self.gradient_steps < -1:
            raise ValueError(f"gradient_steps must be positive or -1 (one per collected step), got {self.gradient_steps}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.vec_env not in OFF_POLICY_VEC_ENVS:
            raise ValueError(f"vec_env must be one of {', '.join(OFF_POLICY_VEC_ENVS)}; got {self.vec_env!r}")
        if self.replay not in REPLAY_KINDS:
            raise ValueError(f"replay must be one of {', '.join(REPLAY_KINDS)}; got {self.replay!r}")
        if not 0.0 <= self.per_beta0 <= 1.0:
            raise ValueError(f"per_beta0 must be in [0, 1], got {self.per_beta0}")


def linear_schedule(start: float, end: float, fraction: float, step: int, horizon: int) -> float:
    """``start -> end`` linearly over the first ``fraction * horizon`` steps, then ``end``."""
    span = fraction * horizon
    if span <= 0:
        return end
    return start + (end - start) * min(1.0, step / span)


def observation_encoder(space: gym.Space) -> tuple[Callable[[Any], np.ndarray], tuple[int, ...], Any]:
    """(encode, shape, dtype) turning raw observations into what replay and networks take.

    Box: float32 (uint8 images stay uint8 to keep replay small); Discrete: one-hot float32.
    """
    if isinstance(space, gym.spaces.Discrete):
        eye = np.eye(int(space.n), dtype=np.float32)
        return (lambda o: eye[int(o) - int(space.start)]), (int(space.n),), np.float32
    if isinstance(space, gym.spaces.Box):
        dtype = np.uint8 if space.dtype == np.uint8 else np.float32
        return (lambda o: np.array(o, dtype=dtype)), tuple(space.shape), dtype  # a copy: envs may reuse arrays
    raise ValueError(f"Unsupported observation space {space}; use a Box or Discrete space (or a wrapper)")


class OffPolicyAgent(PeriodicEvaluation, Agent):
    """Base of the replay-based agents; see the module docstring for the loop and the hooks."""

    Config = OffPolicyConfig
    family = "off-policy"
    steps_own_env = True  # the runner's first environment is ``self.env``

    # ------------------------------------------------------------------ building
    def setup(self) -> None:
        cfg = self.config
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        self.encode, self.obs_shape, obs_dtype = observation_encoder(self.env.observation_space)
        self.n_envs = int(cfg.n_envs)
        self.runner = self._make_runner()
        space = self.env.action_space
        if isinstance(space, gym.spaces.Discrete):
            action_shape, action_dtype = (), np.int64
        else:
            action_shape, action_dtype = tuple(space.shape), np.float32
        self.buffer = make_replay_buffer(
            cfg.replay, cfg.buffer_size, self.obs_shape, action_shape=action_shape, obs_dtype=obs_dtype,
            action_dtype=action_dtype, gamma=cfg.gamma, n_step=cfg.n_step, n_envs=self.n_envs, rng=self.rng,
            alpha=cfg.per_alpha, eps=cfg.per_eps, sort_every=cfg.rank_sort_every,
        )
        self.horizon = self.default_steps
        self.train_from = cfg.learning_starts
        """Updates start after this step (later after resuming a checkpoint without its buffer)."""
        self.buffer_left_out = False
        self.n_updates = 0
        self.targets_stale = False
        self.last_log_step = 0
        self.eval_history = []

    def _make_runner(self) -> EnvRunner:
        cfg = self.config
        if cfg.vec_env == "none":
            envs = [self.env] + [self._make_extra_env() for _ in range(self.n_envs - 1)]
            return EnvRunner(envs, self.rng, self.encode)
        vec = make_vector_env(self._env_arg, self.n_envs, self.env_kwargs, cfg.vec_env,
                              autoreset_mode=gym.vector.AutoresetMode.DISABLED, wrapper=EpisodeReplay)
        return VectorEnvRunner(vec, self.rng, self.encode)

    def close(self) -> None:
        """Close the environments the agent trains on (and the worker processes of ``vec_env='async'``).

        Worker processes also end when the agent is garbage collected or the program exits; close
        explicitly to free them sooner. The agent cannot train after this.
        """
        self.runner.close()
        self.env.close()

    def _make_extra_env(self) -> gym.Env:
        if isinstance(self._env_arg, str):
            return make_env(self._env_arg, self.env_kwargs)
        if self.env.spec is None:
            raise ValueError("n_envs > 1 needs an environment id (or an env with a spec) to make copies")
        return gym.make(self.env.spec)

    # ------------------------------------------------------------------ hooks for subclasses
    def select_action(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """Actions for a batch of encoded observations ``(n, *obs_shape)``."""
        raise NotImplementedError

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient update on ``batch``; may return ``td_error`` (per sample) for prioritized replay."""
        raise NotImplementedError

    def target_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(online, target) parameter tensors kept in sync by :meth:`update_targets`."""
        return []

    def random_actions(self, n: int) -> np.ndarray:
        """Uniform random actions from the agent's generator (not ``space.sample()``, so they replay)."""
        space = self.env.action_space
        if isinstance(space, gym.spaces.Discrete):
            return self.rng.integers(int(space.n), size=n) + int(space.start)
        return self.rng.uniform(space.low, space.high, size=(n, *space.shape)).astype(np.float32)

    # ------------------------------------------------------------------ the loop
    def progress(self) -> float:
        """Fraction of the training budget used, for schedules (epsilon, PER beta)."""
        return min(1.0, self.num_timesteps / max(self.horizon, 1))

    def per_beta(self) -> float:
        beta0 = self.config.per_beta0
        return beta0 + (1.0 - beta0) * self.progress()

    @torch.no_grad()
    def update_targets(self) -> None:
        tau = self.config.tau
        for online, target in self.target_pairs():
            if tau >= 1.0:
                target.copy_(online)
            else:
                target.lerp_(online, tau)
        self.targets_stale = False

    def round_targets(self, batch: Batch) -> torch.Tensor | None:
        """TD targets for a whole training round's minibatches at once, or None (computed per update).

        Within a round the target networks do not change (they are updated between environment
        steps), so an agent whose targets depend on them alone can compute every target of the
        round in one large forward pass instead of ``gradient_steps`` small ones.
        """
        return None

    def round_batches(self, gradient_steps: int, batch_size: int, beta: float) -> Iterator[Batch]:
        """The minibatches of one training round.

        Uniform replay draws the whole round at once (one gather from the arrays instead of
        ``gradient_steps``; the same distribution, since replay does not change during the round)
        and offers it to :meth:`round_targets`. Prioritized replay samples before each update,
        because every update changes the priorities.
        """
        if self.buffer.prioritized:
            for _ in range(gradient_steps):
                yield self.buffer.sample(batch_size, beta)
            return
        per_draw = max(1, ROUND_ROWS // batch_size)  # bound the memory of one draw
        for start in range(0, gradient_steps, per_draw):
            n = min(per_draw, gradient_steps - start)
            batch = self.buffer.sample(n * batch_size)
            targets = self.round_targets(batch)
            for i in range(n):
                yield batch.slice(i * batch_size, (i + 1) * batch_size, targets)

    def train(self, gradient_steps: int, logger: RunLogger | None = None) -> dict[str, torch.Tensor]:
        """``gradient_steps`` updates on replayed minibatches; returns the last update's stats."""
        cfg = self.config
        stats: dict[str, torch.Tensor] = {}
        for batch in self.round_batches(gradient_steps, cfg.batch_size, self.per_beta()):
            stats = self.train_step(batch)
            td_error = stats.pop("td_error", None)
            if self.buffer.prioritized and td_error is not None:
                self.buffer.update_priorities(batch.indices, td_error.detach().numpy())
        self.n_updates += gradient_steps
        self.targets_stale = True
        # A NaN loss makes the weights NaN, and they stay so: the round's last loss tells.
        self.check_stats(stats, self.n_updates)
        if logger is not None and self.num_timesteps - self.last_log_step >= cfg.log_interval:
            self.last_log_step = self.num_timesteps
            values = {f"train/{k}": float(v) for k, v in stats.items()}
            values["train/n_updates"] = self.n_updates
            values.update(self.schedule_values())
            logger.scalars(values, self.num_timesteps)
        return stats

    def schedule_values(self) -> dict[str, float]:
        """Scalars of the schedules to log (subclasses add epsilon etc.)."""
        return {"train/per_beta": self.per_beta()} if self.buffer.prioritized else {}

    def _learn(self, total_steps: int | None, episodes: int | None, logger: RunLogger) -> None:
        cfg = self.config
        n = self.n_envs
        stop_steps = None if total_steps is None else self.num_timesteps + int(total_steps)
        stop_episodes = None if episodes is None else self.num_episodes + int(episodes)
        # From the budget's origin, so a resumed episode budget keeps the uninterrupted schedules.
        self.horizon = stop_steps if stop_steps is not None else self.learn_origin[0] + self.default_steps
        train_every = cfg.train_freq * n
        gradient_steps = cfg.gradient_steps if cfg.gradient_steps > 0 else cfg.train_freq * n
        target_every = max(cfg.target_update_interval // n, 1) * n
        if self.runner.obs is None:
            self.runner.reset()
        # Ctrl-C finishes the current step (its updates included) and stops at _safe_point, so the
        # state a caller saves is the state after a whole step and resuming continues exactly.
        while (stop_steps is None or self.num_timesteps < stop_steps) and (
            stop_episodes is None or self.num_episodes < stop_episodes
        ):
            self._step(n, train_every, gradient_steps, target_every, logger)
            self._safe_point()

    def _step(self, n: int, train_every: int, gradient_steps: int, target_every: int, logger: RunLogger) -> None:
        """One step of every environment, then whatever updates are due after it."""
        cfg = self.config
        runner = self.runner
        obs = runner.obs
        if self.num_timesteps < cfg.learning_starts:
            actions = self.random_actions(n)
        else:
            actions = self.select_action(obs, explore=True)
        next_obs, rewards, terminated, truncated, finished = runner.step(actions)
        self.buffer.add(obs, actions, rewards, next_obs, terminated, truncated)
        self.num_timesteps += n
        t = self.num_timesteps
        if logger.unit == "step":  # an episode budget's bar moves in logger.episode
            logger.advance(n)
        for episode_return, length in finished:
            self.num_episodes += 1
            logger.episode(t, episode_return, length)
        if t % target_every == 0 and self.targets_stale:
            self.update_targets()
        if t > self.train_from and t % train_every == 0:
            self.train(gradient_steps, logger)
        self.maybe_evaluate(t - n, logger)

    # ------------------------------------------------------------------ saving / resuming
    def training_state(self) -> dict[str, Any]:
        state = super().training_state()
        state.update(runner=self.runner.state_dict(), numpy_rng=self.rng.bit_generator.state)
        if self.config.checkpoint_buffer:
            state["buffer"] = self.buffer.state_dict()
        else:
            state["buffer_left_out"] = True
        return state

    def load_training_state(self, state: dict[str, Any]) -> None:
        super().load_training_state(state)
        if "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])
        self.buffer_left_out = bool(state.get("buffer_left_out"))
        if "numpy_rng" in state:
            self.rng.bit_generator.state = state["numpy_rng"]
        if "runner" in state:
            try:
                self.runner.load_state_dict(state["runner"])
            except RuntimeError as err:  # keep the learning; only the unfinished episodes are lost
                warnings.warn(f"{err} Training continues on fresh episodes, so its numbers will differ from "
                              "an uninterrupted run.", InexactResumeWarning, stacklevel=2)
                self.runner.obs = None

    def extra_state(self) -> dict[str, Any]:
        state = super().extra_state()
        state.update(
            n_updates=self.n_updates, targets_stale=self.targets_stale, last_log_step=self.last_log_step,
            horizon=self.horizon,
        )
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        if self.buffer_left_out:  # after load_training_state, now that the step count is known
            refill = max(self.config.learning_starts, self.config.batch_size)
            self.train_from = self.num_timesteps + refill
            warnings.warn(
                f"the checkpoint at step {self.num_timesteps} holds no replay buffer (checkpoint_buffer=false): "
                f"training refills an empty buffer for {refill} steps before it updates again, so its numbers "
                "will differ from an uninterrupted run", InexactResumeWarning, stacklevel=2)
        self.n_updates = int(state.get("n_updates", 0))
        self.targets_stale = bool(state.get("targets_stale", False))
        self.last_log_step = int(state.get("last_log_step", 0))
        self.horizon = int(state.get("horizon", self.horizon))
