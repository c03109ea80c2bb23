"""Collectors: what steps the environments for the training loops.

- :class:`EnvRunner` / :class:`VectorEnvRunner` (off-policy agents): step ``n`` environments in
  lockstep, one transition at a time, for replay;
- :class:`RolloutCollector` (on-policy agents): steps a gymnasium vector env with the policy and
  returns :class:`~classic_rl.buffers.Rollout` batches of ``T`` steps per env.

Off-policy runners. By default (``vec_env='none'``) :class:`EnvRunner` steps the ``n_envs``
environments in turn. ``sync`` and ``async`` run them as a gymnasium ``SyncVectorEnv`` or
``AsyncVectorEnv`` (one worker process per environment: worth it when a step costs more than the
pipe round trip, as MuJoCo or Atari steps may; for CartPole it is slower). :class:`VectorEnvRunner`
keeps the same contract: autoreset is disabled, finished environments are reset with seeds from
the agent's generator in the same order, and a load replays each current episode inside its
environment (its worker process with ``async``), so all three store the same transitions, train
the same weights and resume exactly.

On-policy autoreset. The rollout collector's vector envs run in gymnasium's ``SAME_STEP``
autoreset mode: the step that ends an episode already returns the *next* episode's first
observation, and the last observation of the finished episode arrives in ``info["final_obs"]``.
The collector therefore records, per step, ``next_values[t] = V(s_{t+1})`` -- the next row's
value, or ``V(final_obs)`` where the episode was *truncated* (a time limit is not the end of the
task: bootstrap). Terminated steps are not bootstrapped (``terminated`` zeroes the term in GAE)
and ``episode_end`` stops the advantage recursion at both kinds of ends. Every recorded step is a
real transition (no reset steps to mask).

Resuming. Each collector's ``state_dict`` holds what it carries between steps or rollouts: each
env's current episode (how it began and its actions; replayed on load), and for the rollout
collector the last observations, episode returns and lengths, the action generator and the reward
normaliser's running returns. Training resumed from it takes the same steps as the uninterrupted run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from classic_rl.buffers import Rollout
from classic_rl.checkpoint import InexactResumeWarning
from classic_rl.env_utils import EpisodesNotReplayable, replay_episode
from classic_rl.logger import RunLogger
from classic_rl.normalizers import RewardScaler, RunningMeanStd
from classic_rl.policies import ActorCritic, obs_to_numpy

__all__ = ["EnvRunner", "RolloutCollector", "VectorEnvRunner"]


# ----------------------------------------------------------------------------- off-policy runners
class EnvRunner:
    """Steps ``n`` environments in lockstep and resets each one when its episode ends.

    ``step`` returns the *real* next observations (the final one at an episode end, which is
    what replay must store) and keeps the first observation of the new episode in ``obs``.
    Resets are seeded from ``rng``; with the current episodes' seeds and actions the runner's
    state is replayable (:meth:`state_dict` / :meth:`load_state_dict`).
    """

    def __init__(self, envs: list[gym.Env], rng: np.random.Generator, encode: Callable[[Any], np.ndarray]) -> None:
        self.envs = envs
        self._init_episodes(len(envs), rng, encode)

    def _init_episodes(self, n: int, rng: np.random.Generator, encode: Callable[[Any], np.ndarray]) -> None:
        self.n, self.rng, self.encode = n, rng, encode
        self.obs: np.ndarray | None = None
        self.seeds = [0] * n
        self.actions: list[list[Any]] = [[] for _ in range(n)]
        self.returns = [0.0] * n
        self.lengths = [0] * n

    def _new_episode(self, i: int) -> int:
        """Start env ``i``'s bookkeeping for a new episode; returns its reset seed (drawn from ``rng``)."""
        self.seeds[i] = int(self.rng.integers(2**31 - 1))
        self.actions[i] = []
        self.returns[i], self.lengths[i] = 0.0, 0
        return self.seeds[i]

    def _reset(self, i: int) -> np.ndarray:
        obs, _ = self.envs[i].reset(seed=self._new_episode(i))
        return self.encode(obs)

    def reset(self) -> np.ndarray:
        self.obs = np.stack([self._reset(i) for i in range(self.n)])
        return self.obs

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple[float, int]]]:
        """Step every env; returns (real next obs, rewards, terminated, truncated, finished episodes)."""
        finished: list[tuple[float, int]] = []
        if self.n == 1:  # the common case, without per-env array building
            action = actions[0]
            obs, reward, terminated, truncated, _ = self.envs[0].step(action)
            self.actions[0].append(action)
            self.returns[0] += float(reward)
            self.lengths[0] += 1
            real_next = self.encode(obs)[None]
            if terminated or truncated:
                finished.append((self.returns[0], self.lengths[0]))
                self.obs = self._reset(0)[None]
            else:
                self.obs = real_next
            return (real_next, np.array([reward], dtype=np.float32), np.array([terminated]),
                    np.array([truncated]), finished)
        next_obs = np.empty_like(self.obs)
        real_next = np.empty_like(self.obs)
        rewards = np.empty(self.n, dtype=np.float32)
        terms = np.empty(self.n, dtype=bool)
        truncs = np.empty(self.n, dtype=bool)
        for i, env in enumerate(self.envs):
            obs, rewards[i], terms[i], truncs[i], _ = env.step(actions[i])
            self.actions[i].append(actions[i])
            self.returns[i] += float(rewards[i])
            self.lengths[i] += 1
            real_next[i] = self.encode(obs)
            if terms[i] or truncs[i]:
                finished.append((self.returns[i], self.lengths[i]))
                next_obs[i] = self._reset(i)
            else:
                next_obs[i] = real_next[i]
        self.obs = next_obs
        return real_next, rewards, terms, truncs, finished

    def state_dict(self) -> dict[str, Any]:
        return {
            "started": self.obs is not None,
            "seeds": list(self.seeds),
            "actions": [torch.from_numpy(np.array(a)) if a else None for a in self.actions],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild each env's current episode: reset with its seed, replay its actions."""
        if not state["started"]:
            self.obs = None
            return
        plans = self._load_plans(state)
        self._restored([replay_episode(env, seed, actions) for env, (seed, actions) in zip(self.envs, plans)], plans)

    def _load_plans(self, state: dict[str, Any]) -> list[tuple[int, list[Any]]]:
        """(seed, actions) of each env's current episode from a :meth:`state_dict`."""
        return [(int(seed), [] if saved is None else list(saved.numpy()))
                for seed, saved in zip(state["seeds"], state["actions"])]

    def _restored(self, results: list[tuple[Any, float, int]], plans: list[tuple[int, list[Any]]]) -> None:
        """Take over the replayed episodes: (last obs, return, length) per env."""
        for i, ((_, episode_return, length), (seed, actions)) in enumerate(zip(results, plans)):
            self.seeds[i], self.actions[i] = seed, actions
            self.returns[i], self.lengths[i] = episode_return, length
        self.obs = np.stack([self.encode(obs) for obs, _, _ in results])

    def close(self) -> None:
        for env in self.envs:
            env.close()


class VectorEnvRunner(EnvRunner):
    """:class:`EnvRunner`'s contract over a gymnasium vector env (``vec_env`` sync or async).

    The vector env runs with autoreset DISABLED: a step returns every copy's real next
    observation (the final one where an episode ended), and the runner then resets only the
    finished copies (``reset_mask``) with seeds drawn from ``rng`` in env order, exactly as
    :class:`EnvRunner` does, so both runners see the same episodes and store the same
    transitions. Restoring replays each current episode inside its copy through the
    :class:`~classic_rl.env_utils.EpisodeReplay` wrapper (``set_attr`` gives each copy its
    (seed, actions), ``call`` replays them): the one way that also reaches async worker processes,
    so sync and async share it instead of sync reaching into ``vec.envs``.
    """

    def __init__(self, vec: gym.vector.VectorEnv, rng: np.random.Generator,
                 encode: Callable[[Any], np.ndarray]) -> None:
        self.vec = vec
        self._init_episodes(vec.num_envs, rng, encode)
        # Box encoders (an array copy) take the whole batch at once; Discrete ones (one-hot) a row.
        self.batch_encode = isinstance(vec.single_observation_space, gym.spaces.Box)

    def _encode_rows(self, obs: Any) -> np.ndarray:
        return self.encode(obs) if self.batch_encode else np.stack([self.encode(o) for o in obs])

    def reset(self) -> np.ndarray:
        seeds = [self._new_episode(i) for i in range(self.n)]
        obs, _ = self.vec.reset(seed=seeds)
        self.obs = self._encode_rows(obs)
        return self.obs

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple[float, int]]]:
        """Step every env; returns (real next obs, rewards, terminated, truncated, finished episodes)."""
        obs, rewards, terms, truncs, _ = self.vec.step(actions)
        real_next = self._encode_rows(obs)  # a copy: the vector env reuses its observation array
        for i in range(self.n):
            self.actions[i].append(actions[i])
            self.returns[i] += float(rewards[i])
            self.lengths[i] += 1
        ended = terms | truncs
        finished: list[tuple[float, int]] = []
        next_obs = real_next
        if ended.any():
            seeds: list[int | None] = [None] * self.n
            for i in np.flatnonzero(ended):
                finished.append((self.returns[i], self.lengths[i]))
                seeds[i] = self._new_episode(i)
            first_obs, _ = self.vec.reset(seed=seeds, options={"reset_mask": ended})
            next_obs = real_next.copy()
            for i in np.flatnonzero(ended):
                next_obs[i] = self.encode(first_obs[i])
        self.obs = next_obs
        return real_next, rewards.astype(np.float32), terms, truncs, finished

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild each copy's current episode inside it: reset with its seed, replay its actions."""
        if not state["started"]:
            self.obs = None
            return
        plans = self._load_plans(state)
        self.vec.set_attr("replay_plan", plans)
        self._restored(list(self.vec.call("replay_planned")), plans)

    def close(self) -> None:
        self.vec.close()


# ----------------------------------------------------------------------------- on-policy rollouts
class RolloutCollector:
    """Steps a vector env with a policy and returns :class:`~classic_rl.buffers.Rollout` batches.

    The hot path is numpy only: the policy acts through its :class:`~classic_rl.policies.NumpyActor`
    (numpy views of the current weights; torch's per-call overhead dominates small batches), episode
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
        reason = "the environment is not deterministic given its random generator"
        try:
            replayed = np.array(list(self.envs.call("restore_planned")))
            exact = replayed.shape == self._obs.shape and np.array_equal(replayed, self._obs)
        except RuntimeError as err:  # an episode ended early while replaying, or the envs cannot replay (EnvPool)
            exact = False
            if isinstance(err, EpisodesNotReplayable):
                reason = str(err)
        if not exact:  # keep the learning; only the unfinished episodes are cut short
            warnings.warn(
                f"The environments' current episodes could not be rebuilt exactly ({reason}); training "
                "continues on fresh episodes, so its numbers will differ from an uninterrupted run.",
                InexactResumeWarning, stacklevel=2,
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
