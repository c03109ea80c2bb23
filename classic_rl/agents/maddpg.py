"""MADDPG (Lowe et al., 2017): centralised critics, decentralised actors, on PettingZoo's parallel API.

Agent ``i`` acts from its own observation, ``a_i = mu_i(o_i)``, but its critic sees everyone:
``Q_i(o_1..o_N, a_1..a_N)``. With target networks ``mu'``, ``Q'``::

    td_target_i = r_i + gamma (1 - terminated) Q'_i(o'_1..o'_N, mu'_1(o'_1)..mu'_N(o'_N))
    critic_loss_i = (Q_i(o, a) - td_target_i)^2
    actor_loss_i  = -Q_i(o, a_1..mu_i(o_i)..a_N)        (the other agents' actions from the batch)

Discrete actions are one-hot vectors for the critics; the actor's logits pass through a
straight-through Gumbel-softmax in the actor loss so the gradient reaches them, exploration
samples ``argmax(logits + Gumbel noise)`` (a softmax sample), and the target actors act
greedily. Box actions use a tanh actor and Gaussian exploration noise, as in DDPG.

Environments are named ``MODULE:NAME``, e.g. ``mpe2:simple_spread_v3`` (``MODULE.NAME.parallel_env``
builds it; ``env_kwargs`` go to it, e.g. ``{"N": 2}``), or passed as a ParallelEnv instance.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.envs.registration import EnvSpec
from torch import nn

from classic_rl.agents.base import Agent, register
from classic_rl.agents.continuous import GroupedMLP
from classic_rl.buffers import Batch, ReplayBuffer
from classic_rl.logger import RunLogger
from classic_rl.nets import soft_update


# ---------------------------------------------------------------------------------- environments
class MultiAgentEnv(gym.Env):
    """A PettingZoo ParallelEnv seen as one gymnasium Env, so the shared Agent machinery can hold it.

    ``step`` takes ``{agent: action}`` and returns per-agent observations, the team reward
    (the sum over agents; per-agent rewards are in ``info["rewards"]``) and whether the episode
    is over for everyone. ``observation_space`` and ``action_space`` are ``Dict`` spaces keyed by agent.
    """

    metadata = {"render_modes": []}

    def __init__(self, parallel_env: Any, label: str) -> None:
        self.par = parallel_env
        self.agent_ids: list[str] = list(parallel_env.possible_agents)
        self.observation_space = gym.spaces.Dict({a: parallel_env.observation_space(a) for a in self.agent_ids})
        self.action_space = gym.spaces.Dict({a: parallel_env.action_space(a) for a in self.agent_ids})
        self.spec = EnvSpec(id=label)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        obs, infos = self.par.reset(seed=seed, options=options)
        return obs, infos

    def step(self, actions: dict) -> tuple[dict, float, bool, bool, dict]:
        obs, rewards, terms, truncs, infos = self.par.step(actions)
        terminated = all(terms.get(a, True) for a in self.agent_ids)
        truncated = not terminated and (not self.par.agents or all(truncs.get(a, True) for a in self.agent_ids))
        info = {"rewards": rewards, "terminations": terms, "truncations": truncs, "infos": infos}
        return obs, float(sum(rewards.values())), terminated, truncated, info

    def close(self) -> None:
        self.par.close()


def make_multiagent_env(env: Any, env_kwargs: dict | None = None) -> MultiAgentEnv:
    """``"mpe2:simple_spread_v3"`` (or any ``MODULE:NAME`` with ``MODULE.NAME.parallel_env``) -> env."""
    if isinstance(env, MultiAgentEnv):
        return env
    if not isinstance(env, str):
        if hasattr(env, "possible_agents") and hasattr(env, "observation_space"):
            return MultiAgentEnv(env, type(getattr(env, "unwrapped", env)).__name__)
        raise ValueError(f"maddpg needs a PettingZoo ParallelEnv or an id like 'mpe2:simple_spread_v3', got {env!r}")
    # The rule of every env id (env_utils.import_env_module): MODULE is imported, so its code runs;
    # for a multi-agent env, NAME is then the PettingZoo env module MODULE.NAME.
    module_name, sep, name = env.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(
            f"maddpg needs a multi-agent env id of the form MODULE:NAME, e.g. 'mpe2:simple_spread_v3', got {env!r}"
        )
    try:
        module = importlib.import_module(f"{module_name}.{name}")
    except ModuleNotFoundError:
        hint = ""
        try:
            import pkgutil

            pkg = importlib.import_module(module_name)
            names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
            hint = f" Valid names in {module_name}: {', '.join(names)}."
        except ModuleNotFoundError:
            hint = f" Is {module_name} installed? (pip install -e '.[marl]')"
        raise ValueError(f"Unknown multi-agent environment {env!r}.{hint}") from None
    if not hasattr(module, "parallel_env"):
        raise ValueError(f"{module_name}.{name} has no parallel_env(); maddpg needs PettingZoo's parallel API")
    return MultiAgentEnv(module.parallel_env(**(env_kwargs or {})), env)


# ---------------------------------------------------------------------------------- actions
class ActionCodec:
    """One agent's action as the critic's vector: one-hot for Discrete, [-1, 1]^d for Box."""

    def __init__(self, space: gym.Space) -> None:
        self.discrete = isinstance(space, gym.spaces.Discrete)
        if self.discrete:
            self.dim = int(space.n)
        elif isinstance(space, gym.spaces.Box):
            self.dim = int(np.prod(space.shape))
            self.shape = space.shape
            self.low, self.high = space.low.astype(np.float64), space.high.astype(np.float64)
        else:
            raise ValueError(f"maddpg supports Discrete and Box action spaces, got {space}")

    def to_env(self, vec: np.ndarray) -> Any:
        """Critic-space vector -> env action (index of the one-hot, or rescaled from [-1, 1])."""
        if self.discrete:
            return int(np.argmax(vec))
        scaled = self.low + (np.clip(vec, -1.0, 1.0) + 1.0) * 0.5 * (self.high - self.low)
        return scaled.reshape(self.shape).astype(np.float32)

    def policy_action(self, out: torch.Tensor, temperature: float) -> torch.Tensor:
        """Differentiable action of the actor's output (for the actor loss)."""
        if self.discrete:
            return F.gumbel_softmax(out, tau=temperature, hard=True)
        return torch.tanh(out)

    def greedy(self, out: torch.Tensor) -> torch.Tensor:
        """Deterministic action (targets and evaluation)."""
        if self.discrete:
            return F.one_hot(out.argmax(-1), self.dim).to(out.dtype)
        return torch.tanh(out)


# ---------------------------------------------------------------------------------- replay
class MultiAgentReplayBuffer(ReplayBuffer):
    """The shared uniform replay with one reward per agent: ``rewards`` has shape (capacity, n_agents).

    Observations and actions are the agents' concatenated (joint) vectors; one-step transitions
    only, so ``discounts`` is ``gamma (1 - terminated)`` as for every other agent.
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, n_agents: int, gamma: float,
                 rng: np.random.Generator) -> None:
        super().__init__(capacity, (obs_dim,), (act_dim,), action_dtype=np.float32, gamma=gamma, rng=rng)
        self.rewards = np.zeros((self.capacity, n_agents), dtype=np.float32)


# ---------------------------------------------------------------------------------- the agent
@dataclass
class MADDPGConfig:
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden sizes of every actor and critic (the paper: two layers of 64)."""
    actor_lr: float = 1e-2
    critic_lr: float = 1e-2
    gamma: float = 0.95
    tau: float = 0.01
    """Soft target update rate: target <- tau * online + (1 - tau) * target."""
    batch_size: int = 1024
    buffer_size: int = 1_000_000
    learning_starts: int = 1024
    """Joint environment steps of random play before learning."""
    train_freq: int = 100
    """Update every this many joint steps ..."""
    gradient_steps: int = 1
    """... with this many gradient steps per agent."""
    gumbel_temperature: float = 1.0
    noise_std: float = 0.1
    """Gaussian exploration noise for Box actions (in [-1, 1] units)."""
    logit_reg: float = 1e-3
    """Penalty on the squared actor outputs (keeps discrete logits bounded, as in the paper's code)."""
    max_grad_norm: float = 0.5

    def validate(self) -> None:
        for name in ("actor_lr", "critic_lr", "tau", "gumbel_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"maddpg: {name} must be positive, got {getattr(self, name)}")
        for name in ("batch_size", "buffer_size", "train_freq", "gradient_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"maddpg: {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"maddpg: gamma must be in [0, 1], got {self.gamma}")


@register
class MADDPG(Agent):
    """Multi-agent DDPG with centralised critics (see the module docstring)."""

    algo = "maddpg"
    family = "multi-agent"
    Config = MADDPGConfig
    action_kinds = ("multi-agent",)
    default_steps = 250_000

    def __init__(self, env: Any = "mpe2:simple_spread_v3", config: Any = None, seed: int = 0,
                 env_kwargs: dict | None = None, config_file: Any = None, **overrides: Any) -> None:
        super().__init__(make_multiagent_env(env, env_kwargs), config=config, seed=seed, env_kwargs=env_kwargs,
                         config_file=config_file, **overrides)
        self._env_arg = env if isinstance(env, str) else self.env

    def check_env(self, env: gym.Env) -> None:
        if not isinstance(env, MultiAgentEnv):
            raise ValueError(f"maddpg needs a multi-agent env such as 'mpe2:simple_spread_v3', got {self.env_id}")
        for agent_id, space in env.observation_space.spaces.items():
            if not isinstance(space, gym.spaces.Box):
                raise ValueError(f"maddpg needs Box observations; agent {agent_id} has {space}")

    def setup(self) -> None:
        cfg = self.config
        cfg.validate()
        env = self.env
        self.agent_ids = env.agent_ids
        n = len(self.agent_ids)
        self.codecs = [ActionCodec(env.action_space[a]) for a in self.agent_ids]
        self.obs_dims = [int(np.prod(env.observation_space[a].shape)) for a in self.agent_ids]
        self.act_dims = [c.dim for c in self.codecs]
        self.obs_slices = _slices(self.obs_dims)
        self.act_slices = _slices(self.act_dims)
        # Actors: agent i reads only its own observation (zero-padded to the largest) and uses
        # the first act_dims[i] outputs. Critics: all read the joint observation and action.
        self.actors = GroupedMLP(n, max(self.obs_dims), cfg.hidden, max(self.act_dims))
        self.critics = GroupedMLP(n, self.critic_input_dim, cfg.hidden, 1)
        self.target_actors = copy.deepcopy(self.actors).requires_grad_(False)
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actors.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=cfg.critic_lr)
        self.buffer = MultiAgentReplayBuffer(
            cfg.buffer_size, sum(self.obs_dims), sum(self.act_dims), n, gamma=cfg.gamma, rng=self.rng
        )

    @property
    def critic_input_dim(self) -> int:
        """Every agent's observation and action: sum(obs dims) + sum(action dims)."""
        return sum(self.obs_dims) + sum(self.act_dims)

    # -- acting
    def _joint_obs(self, obs: dict) -> np.ndarray:
        return np.concatenate([np.asarray(obs[a], dtype=np.float32).reshape(-1) for a in self.agent_ids])

    def actor_inputs(self, joint_obs: torch.Tensor) -> torch.Tensor:
        """(B, sum obs) joint observations -> (n, B, max obs): agent i's own observation only."""
        out = joint_obs.new_zeros(len(self.agent_ids), joint_obs.shape[0], max(self.obs_dims))
        for i, sl in enumerate(self.obs_slices):
            out[i, :, : sl.stop - sl.start] = joint_obs[:, sl]
        return out

    def _actor_outputs(self, actors: GroupedMLP, joint_obs: torch.Tensor) -> list[torch.Tensor]:
        out = actors(self.actor_inputs(joint_obs))
        return [out[i, :, :d] for i, d in enumerate(self.act_dims)]

    def _action_vectors(self, joint_obs: np.ndarray, explore: bool) -> np.ndarray:
        """Every agent's action in critic space, each from its own observation."""
        x = np.zeros((len(self.agent_ids), max(self.obs_dims)), dtype=np.float32)
        for i, sl in enumerate(self.obs_slices):
            x[i, : sl.stop - sl.start] = joint_obs[sl]
        outs = self.actors.forward_numpy(x)
        parts = []
        for out, codec in zip(outs, self.codecs):
            out = out[: codec.dim]
            if codec.discrete:
                if explore:  # argmax(logits + Gumbel noise) is a sample of softmax(logits)
                    out = out - np.log(-np.log(self.rng.uniform(1e-10, 1.0, codec.dim)))
                vec = np.zeros(codec.dim, dtype=np.float32)
                vec[int(np.argmax(out))] = 1.0
            else:
                vec = np.tanh(out)
                if explore:
                    vec = np.clip(vec + self.config.noise_std * self.rng.standard_normal(codec.dim), -1, 1)
            parts.append(vec.astype(np.float32))
        return np.concatenate(parts)

    def _random_vectors(self) -> np.ndarray:
        parts = []
        for codec in self.codecs:
            if codec.discrete:
                vec = np.zeros(codec.dim, dtype=np.float32)
                vec[self.rng.integers(codec.dim)] = 1.0
            else:
                vec = self.rng.uniform(-1, 1, codec.dim).astype(np.float32)
            parts.append(vec)
        return np.concatenate(parts)

    def _to_env(self, vectors: np.ndarray) -> dict:
        return {a: c.to_env(vectors[sl]) for a, c, sl in zip(self.agent_ids, self.codecs, self.act_slices)}

    def act(self, obs: dict, deterministic: bool = True) -> dict:
        """``{agent: observation}`` -> ``{agent: action}``, each actor seeing only its own observation."""
        return self._to_env(self._action_vectors(self._joint_obs(obs), explore=not deterministic))

    # -- learning
    def critic_input(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The centralised critics' input: every agent's observation and action, concatenated."""
        if actions.dim() == 3:  # one action set per critic: (n, B, sum act)
            obs = obs.unsqueeze(0).expand(actions.shape[0], -1, -1)
        return torch.cat([obs, actions], dim=-1)

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step for every agent's critic, then every agent's actor, on one batch.

        The n losses are summed before one backward pass: each depends only on its own
        agent's parameters, so the gradients equal n separate updates.
        """
        cfg = self.config
        obs, actions, next_obs = batch.obs, batch.actions, batch.next_obs
        with torch.no_grad():
            next_actions = torch.cat(
                [c.greedy(o) for c, o in zip(self.codecs, self._actor_outputs(self.target_actors, next_obs))], dim=-1
            )
            q_next = self.target_critics(self.critic_input(next_obs, next_actions)).squeeze(-1)  # (n, B)
            td_target = batch.rewards.T + batch.discounts * q_next  # discounts = gamma (1 - terminated)
        q = self.critics(self.critic_input(obs, actions)).squeeze(-1)
        critic_loss = (q - td_target).pow(2).mean(dim=1)  # per agent
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.sum().backward()
        self.critics.clip_grad_norm_(cfg.max_grad_norm)
        self.critic_opt.step()

        outs = self._actor_outputs(self.actors, obs)
        own = [c.policy_action(o, cfg.gumbel_temperature) for c, o in zip(self.codecs, outs)]
        joint = torch.stack([
            torch.cat([actions[:, : sl.start], own[i], actions[:, sl.stop :]], dim=-1)
            for i, sl in enumerate(self.act_slices)
        ])  # critic i sees agent i's policy action and the others' actions from the batch
        self.critics.requires_grad_(False)
        q_pi = self.critics(self.critic_input(obs, joint)).squeeze(-1)
        self.critics.requires_grad_(True)
        reg = torch.stack([o.pow(2).mean() for o in outs])
        actor_loss = -q_pi.mean(dim=1) + cfg.logit_reg * reg
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.sum().backward()
        self.actors.clip_grad_norm_(cfg.max_grad_norm)
        self.actor_opt.step()

        soft_update(self.target_actors, self.actors, cfg.tau)
        soft_update(self.target_critics, self.critics, cfg.tau)
        return {"critic_loss": critic_loss.mean().item(), "actor_loss": actor_loss.mean().item()}

    def _learn(self, total_steps: int | None, episodes: int | None, logger: RunLogger) -> None:
        cfg = self.config
        start_steps, start_episodes = self.num_timesteps, self.num_episodes
        obs, _ = self.env.reset(seed=int(self.rng.integers(2**31 - 1)))
        joint = self._joint_obs(obs)
        returns = np.zeros(len(self.agent_ids))
        length = 0
        while (total_steps is None or self.num_timesteps - start_steps < total_steps) and (
            episodes is None or self.num_episodes - start_episodes < episodes
        ):
            if self.num_timesteps < cfg.learning_starts:
                vectors = self._random_vectors()
            else:
                vectors = self._action_vectors(joint, explore=True)
            obs, _, terminated, truncated, info = self.env.step(self._to_env(vectors))
            rewards = np.array([info["rewards"].get(a, 0.0) for a in self.agent_ids], dtype=np.float32)
            next_joint = self._joint_obs(obs)
            self.buffer.add(joint[None], vectors[None], rewards[None], next_joint[None],
                            np.array([terminated]), np.array([truncated]))
            returns += rewards
            length += 1
            self.num_timesteps += 1
            if logger.unit == "step":
                logger.advance(1)
            if terminated or truncated:
                self.num_episodes += 1
                logger.episode(self.num_timesteps, float(returns.sum()), length)
                logger.scalars({f"maddpg/return_{a}": float(r) for a, r in zip(self.agent_ids, returns)},
                               self.num_timesteps)
                obs, _ = self.env.reset(seed=int(self.rng.integers(2**31 - 1)))
                next_joint = self._joint_obs(obs)
                returns[:] = 0.0
                length = 0
            joint = next_joint
            if self.num_timesteps >= cfg.learning_starts and self.num_timesteps % cfg.train_freq == 0:
                for _ in range(cfg.gradient_steps):
                    stats = self.update(self.buffer.sample(cfg.batch_size))
                logger.scalars({f"maddpg/{k}": v for k, v in stats.items()}, self.num_timesteps)
                self.check_stats(stats)
            self._safe_point()

    def evaluate(self, episodes: int = 10, seed: int = 123, env: Any = None) -> tuple[float, float]:
        """Mean and std of the team return (sum over agents) of greedy play on fresh seeded episodes."""
        from classic_rl.evaluation import evaluate

        target = make_multiagent_env(env if env is not None else self._env_arg, self.env_kwargs)
        if target is self.env:  # never disturb the training env's episode
            target = copy.deepcopy(self.env)
        return evaluate(self, target, episodes=episodes, seed=seed)

    # -- persistence
    def networks(self) -> dict[str, nn.Module]:
        return {"actors": self.actors, "critics": self.critics, "target_actors": self.target_actors,
                "target_critics": self.target_critics}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actors": self.actor_opt, "critics": self.critic_opt}

    def training_state(self) -> dict[str, Any]:
        return {**super().training_state(), "buffer": self.buffer.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        super().load_training_state(state)
        if "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "rng": self.rng.bit_generator.state}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]


def _slices(dims: list[int]) -> list[slice]:
    ends = np.cumsum([0, *dims])
    return [slice(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])]
