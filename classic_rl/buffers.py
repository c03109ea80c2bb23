"""Experience storage: replay for the off-policy agents (uniform, prioritized -- proportional sum
tree and rank-based --, n-step) and :class:`Rollout`, the on-policy agents' batch of trajectories.

Every buffer stores transitions in preallocated numpy arrays (never lists of tuples) and hands
out :class:`Batch` es of torch tensors. A stored transition is already an n-step one::

    obs, action, reward = G_t^(n), next_obs = s_{t+m}, discount = gamma^m (1 - terminated)

so every agent computes its TD target the same way, ``y = reward + discount * V(next_obs)``,
whatever n is (see :mod:`classic_rl.core.returns` for the math). ``add`` takes one step of
``n_envs`` environments (leading dimension ``n_envs``); with n > 1 a small window per
environment turns steps into n-step transitions as they complete, and flushes at episode ends
(termination: no bootstrap; truncation: bootstrap from the real final observation).

Prioritized replay (Schaul et al. 2016) samples transition i with probability
``P(i) = p_i^alpha / sum_k p_k^alpha`` and corrects the bias with importance-sampling weights
``w_i = (N P(i))^-beta / max_j w_j`` (normalised by the largest weight of the batch, as Dopamine
does), beta annealed to 1 by the agent. Two priority kinds:

- proportional: ``p_i = |delta_i| + eps`` in a sum tree (O(log N) update and sampling);
- rank-based: ``p_i = 1 / rank(i)`` with transitions ranked by ``|delta_i|`` (the course's variant;
  robust to outlier TD errors).

New transitions get the largest priority seen so far, so each is replayed at least once soon.
Buffers are generic over observation and action shapes/dtypes, so the continuous-control agents
use them too (float action arrays of any shape). ``state_dict``/``load_state_dict`` round-trip
everything (arrays, counters, pending n-step windows, priorities) as tensors for resuming.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

REPLAY_KINDS = ("uniform", "proportional", "rank")


@dataclass
class Batch:
    """A sampled minibatch. ``weights`` is None for uniform replay (all ones); ``targets`` holds
    TD targets an agent computed ahead of time (see ``OffPolicyAgent.round_targets``), else None."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    discounts: torch.Tensor
    weights: torch.Tensor | None
    indices: np.ndarray
    targets: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def slice(self, start: int, stop: int, targets: torch.Tensor | None = None) -> Batch:
        """Rows ``start:stop`` as a Batch of views (``targets``: precomputed targets of the whole batch)."""
        return Batch(
            obs=self.obs[start:stop], actions=self.actions[start:stop], rewards=self.rewards[start:stop],
            next_obs=self.next_obs[start:stop], discounts=self.discounts[start:stop],
            weights=None if self.weights is None else self.weights[start:stop], indices=self.indices[start:stop],
            targets=None if targets is None else targets[start:stop],
        )


class NStepWindow:
    """The pending steps of one environment, emitted as n-step transitions once complete.

    ``G = sum_{k<m} gamma^k r_{t+k}`` is accumulated backwards (Horner), ``G = r + gamma G``.
    """

    def __init__(self, n: int, gamma: float) -> None:
        self.n, self.gamma = n, gamma
        self.obs: deque[np.ndarray] = deque()
        self.actions: deque[np.ndarray] = deque()
        self.rewards: deque[float] = deque()

    def __len__(self) -> int:
        return len(self.rewards)

    def push(
        self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray,
        terminated: bool, truncated: bool,
    ) -> list[tuple[np.ndarray, np.ndarray, float, np.ndarray, float]]:
        """Add one step; return the transitions it completes as (obs, action, G, next_obs, discount)."""
        self.obs.append(np.array(obs))  # copies: the caller may reuse its arrays
        self.actions.append(np.array(action))
        self.rewards.append(float(reward))
        out = []
        if terminated or truncated:  # flush: every pending step ends its window here
            g, disc = 0.0, 1.0
            rows = []
            for r in reversed(self.rewards):
                g = r + self.gamma * g
                disc *= self.gamma
                rows.append((g, 0.0 if terminated else disc))
            for (g, d), o, a in zip(reversed(rows), self.obs, self.actions):
                out.append((o, a, g, next_obs, d))
            self.clear()
        elif len(self.rewards) == self.n:
            g = 0.0
            for r in reversed(self.rewards):
                g = r + self.gamma * g
            out.append((self.obs.popleft(), self.actions.popleft(), g, next_obs, self.gamma**self.n))
            self.rewards.popleft()
        return out

    def clear(self) -> None:
        self.obs.clear()
        self.actions.clear()
        self.rewards.clear()


class ReplayBuffer:
    """Uniform experience replay over preallocated arrays (the DQN buffer).

    Args:
        capacity: number of transitions kept (oldest overwritten first).
        obs_shape, obs_dtype: one observation (e.g. ``(4,)``, float32; ``(4, 84, 84)``, uint8).
        action_shape, action_dtype: one action; ``()`` and int64 for discrete actions,
            ``(act_dim,)`` and float32 for continuous ones.
        gamma, n_step: discount and number of steps per stored transition.
        n_envs: environments stepped together (the leading dimension of :meth:`add`).
        rng: numpy generator used for sampling (share the agent's so one state seeds it all).
    """

    prioritized = False

    def __init__(
        self,
        capacity: int,
        obs_shape: Sequence[int],
        action_shape: Sequence[int] = (),
        obs_dtype: Any = np.float32,
        action_dtype: Any = np.int64,
        gamma: float = 0.99,
        n_step: int = 1,
        n_envs: int = 1,
        rng: np.random.Generator | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be at least 1, got {capacity}")
        if n_step < 1:
            raise ValueError(f"n_step must be at least 1, got {n_step}")
        self.capacity, self.gamma, self.n_step, self.n_envs = int(capacity), float(gamma), int(n_step), int(n_envs)
        self.obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.next_obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.actions = np.zeros((capacity, *action_shape), dtype=action_dtype)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.discounts = np.zeros(capacity, dtype=np.float32)
        self.pos = 0
        self.size = 0
        self.rng = rng if rng is not None else np.random.default_rng()
        self.windows = [NStepWindow(self.n_step, self.gamma) for _ in range(n_envs)] if n_step > 1 else []

    def __len__(self) -> int:
        return self.size

    # ------------------------------------------------------------------ writing
    def add(
        self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
        terminated: np.ndarray, truncated: np.ndarray,
    ) -> None:
        """Store one step of ``n_envs`` environments (arrays with leading dimension ``n_envs``).

        ``next_obs`` must be the real next observation, also at an episode end (the final
        observation, not the first one of the next episode).
        """
        if self.n_step == 1:
            discounts = self.gamma * (1.0 - np.asarray(terminated, dtype=np.float32))
            self.store(obs, actions, rewards, next_obs, discounts)
            return
        for i, window in enumerate(self.windows):
            for o, a, g, nxt, d in window.push(obs[i], actions[i], rewards[i], next_obs[i], terminated[i], truncated[i]):
                self.store(o[None], np.asarray(a)[None], np.float32(g)[None], nxt[None], np.float32(d)[None])

    def store(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
              discounts: np.ndarray) -> None:
        """Write ready-made (n-step) transitions: arrays with a leading dimension of size k, where
        ``rewards`` are the returns G and ``discounts`` are ``gamma^m (1 - terminated)``."""
        k = len(rewards)
        if self.pos + k <= self.capacity:
            idx: slice | np.ndarray = slice(self.pos, self.pos + k)
        else:
            idx = (self.pos + np.arange(k)) % self.capacity
        self.obs[idx] = obs
        self.next_obs[idx] = next_obs
        self.actions[idx] = actions
        self.rewards[idx] = rewards
        self.discounts[idx] = discounts
        start = self.pos
        self.pos = (self.pos + k) % self.capacity
        self.size = min(self.size + k, self.capacity)
        self._on_store(start, k)

    _store = store  # the name D4PG's learner uses

    def _on_store(self, start: int, k: int) -> None:
        """Hook for prioritized buffers: ``k`` transitions were written from position ``start``."""

    # ------------------------------------------------------------------ sampling
    def sample(self, batch_size: int, beta: float = 1.0) -> Batch:
        """A minibatch of ``batch_size`` transitions (``beta`` only matters for prioritized replay)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer; add transitions first")
        indices, weights = self._sample_indices(int(batch_size), beta)
        return Batch(
            obs=torch.from_numpy(self.obs[indices]),
            actions=torch.from_numpy(self.actions[indices]),
            rewards=torch.from_numpy(self.rewards[indices]),
            next_obs=torch.from_numpy(self.next_obs[indices]),
            discounts=torch.from_numpy(self.discounts[indices]),
            weights=None if weights is None else torch.from_numpy(weights.astype(np.float32)),
            indices=indices,
        )

    def _sample_indices(self, batch_size: int, beta: float) -> tuple[np.ndarray, np.ndarray | None]:
        return self.rng.integers(0, self.size, size=batch_size), None

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        """Uniform replay has no priorities; kept so agents can call it unconditionally."""

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: stored arrays, counters, pending n-step steps."""
        n = self.size
        state: dict[str, Any] = {
            "pos": self.pos,
            "size": n,
            **{name: torch.from_numpy(getattr(self, name)[:n].copy()) for name in self._array_names()},
        }
        state["windows"] = [
            {
                "obs": torch.from_numpy(np.stack(list(w.obs))) if len(w) else None,
                "actions": torch.from_numpy(np.stack([np.asarray(a) for a in w.actions])) if len(w) else None,
                "rewards": list(w.rewards),
            }
            for w in self.windows
        ]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = int(state["size"])
        if n > self.capacity:
            raise ValueError(f"saved buffer holds {n} transitions but capacity is {self.capacity}")
        for name in self._array_names():
            getattr(self, name)[:n] = state[name].numpy()
        self.pos, self.size = int(state["pos"]), n
        for window, saved in zip(self.windows, state.get("windows", [])):
            window.clear()
            for i, r in enumerate(saved["rewards"]):
                window.obs.append(saved["obs"][i].numpy())
                window.actions.append(saved["actions"][i].numpy())
                window.rewards.append(float(r))

    def _array_names(self) -> tuple[str, ...]:
        return ("obs", "next_obs", "actions", "rewards", "discounts")


# ---------------------------------------------------------------------------------- sum tree
class SumTree:
    """A binary tree whose leaves hold priorities and whose inner nodes hold the sums below them.

    ``tree[1]`` is the total; leaf i sits at ``tree[leaves + i]``. Sampling a transition with
    probability ``p_i / total`` is a walk from the root: draw ``u ~ U[0, total)``, go left when
    ``u`` is below the left child's sum, otherwise subtract it and go right (O(log N)).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.leaves = 1 << max(0, (self.capacity - 1).bit_length())
        self.tree = np.zeros(2 * self.leaves, dtype=np.float64)

    def total(self) -> float:
        return float(self.tree[1])

    def get(self, indices: np.ndarray) -> np.ndarray:
        return self.tree[self.leaves + np.asarray(indices)]

    def set(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set leaves ``indices`` to ``values`` and refresh the sums above them."""
        indices = np.asarray(indices, dtype=np.int64)
        tree = self.tree
        if indices.size == 1:  # the per-step insert: a plain loop beats numpy on one element
            node = int(indices.reshape(-1)[0]) + self.leaves
            tree[node] = float(np.asarray(values).reshape(-1)[0])
            node //= 2
            while node >= 1:
                tree[node] = tree[2 * node] + tree[2 * node + 1]
                node //= 2
            return
        nodes = indices + self.leaves
        tree[nodes] = values
        while nodes[0] > 1:  # every node is on the same level, so they reach the root together
            nodes = nodes // 2
            tree[nodes] = tree[2 * nodes] + tree[2 * nodes + 1]

    def find(self, masses: np.ndarray) -> np.ndarray:
        """Leaf index for each prefix-sum value in ``masses`` (each in ``[0, total)``)."""
        nodes = np.ones(len(masses), dtype=np.int64)
        masses = np.asarray(masses, dtype=np.float64).copy()
        tree = self.tree
        while nodes[0] < self.leaves:
            left = 2 * nodes
            left_sum = tree[left]
            right = masses >= left_sum
            masses -= np.where(right, left_sum, 0.0)
            nodes = left + right
        return nodes - self.leaves


class _PrioritizedBase(ReplayBuffer):
    """What both prioritized kinds share: priorities ``|delta| + eps`` and the max for new items."""

    prioritized = True

    def __init__(self, *args: Any, alpha: float = 0.6, eps: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if alpha < 0:
            raise ValueError(f"per_alpha must be non-negative, got {alpha}")
        self.alpha, self.eps = float(alpha), float(eps)
        self.max_priority = 1.0

    def _priorities(self, td_errors: np.ndarray) -> np.ndarray:
        p = np.abs(np.asarray(td_errors, dtype=np.float64)).reshape(-1) + self.eps
        self.max_priority = max(self.max_priority, float(p.max()))
        return p

    @staticmethod
    def _weights(probs: np.ndarray, n: int, beta: float) -> np.ndarray:
        """``w_i = (N P(i))^-beta / max_j w_j``."""
        w = (n * probs) ** (-beta)
        return w / w.max()

    def _stratified(self, batch_size: int, total: float) -> np.ndarray:
        """One uniform draw in each of ``batch_size`` equal slices of ``[0, total)``."""
        return (np.arange(batch_size) + self.rng.random(batch_size)) * (total / batch_size)


class PrioritizedReplayBuffer(_PrioritizedBase):
    """Proportional prioritized replay: ``P(i) = p_i^alpha / sum_k p_k^alpha`` via a :class:`SumTree`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tree = SumTree(self.capacity)

    def _on_store(self, start: int, k: int) -> None:
        idx = (start + np.arange(k)) % self.capacity
        self.tree.set(idx, np.full(k, self.max_priority**self.alpha))

    def _sample_indices(self, batch_size: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
        total = self.tree.total()
        indices = np.minimum(self.tree.find(self._stratified(batch_size, total)), self.size - 1)
        probs = self.tree.get(indices) / total
        return indices, self._weights(probs, self.size, beta)

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        self.tree.set(indices, self._priorities(td_errors) ** self.alpha)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["tree"] = torch.from_numpy(self.tree.tree.copy())
        state["max_priority"] = self.max_priority
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.tree.tree[:] = state["tree"].numpy()
        self.max_priority = float(state["max_priority"])


class RankPrioritizedReplayBuffer(_PrioritizedBase):
    """Rank-based prioritized replay: ``P(i) = rank(i)^-alpha / sum_k k^-alpha``, rank 1 = largest |delta|.

    Ranks come from sorting the stored priorities, refreshed every ``sort_every`` samples (the
    paper keeps an approximately sorted heap and re-sorts periodically for the same reason: a
    full sort per minibatch is O(N log N)). Transitions stored since the last sort carry the
    maximum priority, so they take the top ranks, newest first. ``sort_every=1`` is exact.
    The rank distribution's cumulative sums are precomputed once, so sampling a batch is a
    binary search per draw.
    """

    def __init__(self, *args: Any, sort_every: int = 100, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if sort_every < 1:
            raise ValueError(f"rank_sort_every must be at least 1, got {sort_every}")
        self.sort_every = int(sort_every)
        self.priorities = np.zeros(self.capacity, dtype=np.float64)
        self.rank_cdf = np.cumsum(np.arange(1, self.capacity + 1, dtype=np.float64) ** -self.alpha)
        self.order = np.zeros(0, dtype=np.int64)  # indices by descending priority at the last sort
        self.fresh: list[int] = []  # positions written since the last sort, oldest first
        self.samples_since_sort = 0

    def _on_store(self, start: int, k: int) -> None:
        for i in range(k):
            pos = (start + i) % self.capacity
            self.priorities[pos] = self.max_priority
            self.fresh.append(pos)
        if len(self.fresh) > self.capacity:  # many stores without sampling: just sort next time
            self.fresh.clear()
            self.samples_since_sort = self.sort_every

    def sort(self) -> None:
        """Recompute the ranks from the current priorities (stable: ties keep index order)."""
        self.order = np.argsort(-self.priorities[: self.size], kind="stable")
        self.fresh.clear()
        self.samples_since_sort = 0

    def _sample_indices(self, batch_size: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
        if self.samples_since_sort >= self.sort_every or len(self.order) == 0:
            self.sort()
        self.samples_since_sort += 1
        n = self.size
        total = self.rank_cdf[n - 1]
        ranks = np.minimum(np.searchsorted(self.rank_cdf[:n], self._stratified(batch_size, total), side="right"), n - 1)
        # rank r < m is the r-th newest fresh transition; after them come the sorted ones. With a
        # full buffer a fresh position may also appear, stale, among the sorted ones; ranks are
        # cut at N, which drops about as many of the lowest-priority entries.
        fresh = np.asarray(self.fresh[::-1], dtype=np.int64)
        m = len(fresh)
        from_fresh = ranks < m
        indices = np.where(from_fresh, fresh[np.minimum(ranks, max(m - 1, 0))] if m else 0,
                           self.order[np.clip(ranks - m, 0, len(self.order) - 1)])
        probs = (ranks + 1.0) ** -self.alpha / total
        return indices, self._weights(probs, n, beta)

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        self.priorities[np.asarray(indices)] = self._priorities(td_errors)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            priorities=torch.from_numpy(self.priorities[: self.size].copy()),
            order=torch.from_numpy(self.order.copy()),
            fresh=list(self.fresh),
            samples_since_sort=self.samples_since_sort,
            max_priority=self.max_priority,
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.priorities[: self.size] = state["priorities"].numpy()
        self.order = state["order"].numpy().astype(np.int64)
        self.fresh = [int(i) for i in state["fresh"]]
        self.samples_since_sort = int(state["samples_since_sort"])
        self.max_priority = float(state["max_priority"])


def make_replay_buffer(kind: str, capacity: int, obs_shape: Sequence[int], **kwargs: Any) -> ReplayBuffer:
    """Build a buffer by kind: ``uniform``, ``proportional`` or ``rank`` (prioritized kinds take
    ``alpha``, ``eps``; ``rank`` also ``sort_every``)."""
    classes = {"uniform": ReplayBuffer, "proportional": PrioritizedReplayBuffer, "rank": RankPrioritizedReplayBuffer}
    if kind not in classes:
        raise ValueError(f"Unknown replay kind {kind!r}; valid: {', '.join(REPLAY_KINDS)}")
    if kind == "uniform":
        for key in ("alpha", "eps", "sort_every"):
            kwargs.pop(key, None)
    elif kind == "proportional":
        kwargs.pop("sort_every", None)
    return classes[kind](capacity, obs_shape, **kwargs)


# ---------------------------------------------------------------------------------- on-policy rollouts
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
