"""Replay buffers: sum tree, proportional and rank-based priorities, IS weights, n-step returns, resume."""

import numpy as np
import pytest
import torch

from classic_rl.buffers import (
    PrioritizedReplayBuffer,
    RankPrioritizedReplayBuffer,
    ReplayBuffer,
    SumTree,
    make_replay_buffer,
)
from classic_rl.core.returns import n_step_returns


def fill(buffer, n, obs_dim=1):
    """n single-env transitions whose observation is the transition's index."""
    for i in range(n):
        o = np.full((1, obs_dim), i, dtype=np.float32)
        buffer.add(o, np.array([i % 2]), np.array([float(i)], dtype=np.float32), o + 1, np.array([False]),
                   np.array([False]))


# ---------------------------------------------------------------------------------- sum tree
def test_sum_tree_sampling_frequencies_match_priorities():
    tree = SumTree(6)  # not a power of two: 8 leaves, 2 unused
    priorities = np.array([1.0, 2.0, 3.0, 4.0, 0.0, 10.0])
    tree.set(np.arange(6), priorities)
    assert tree.total() == pytest.approx(20.0)
    rng = np.random.default_rng(0)
    draws = tree.find(rng.random(200_000) * tree.total())
    freq = np.bincount(draws, minlength=6) / len(draws)
    np.testing.assert_allclose(freq, priorities / priorities.sum(), atol=0.005)
    assert freq[4] == 0.0  # zero priority is never sampled


def test_sum_tree_updates_keep_every_inner_sum_consistent():
    tree = SumTree(5)
    tree.set(np.array([0, 1, 2, 3, 4]), np.ones(5))
    tree.set(np.array([3]), np.array([7.0]))  # scalar path
    tree.set(np.array([0, 0, 4]), np.array([2.0, 2.0, 0.5]))  # vector path with a duplicate index
    leaves = tree.tree[tree.leaves :]
    np.testing.assert_allclose(leaves[:5], [2.0, 1.0, 1.0, 7.0, 0.5])
    for node in range(1, tree.leaves):
        assert tree.tree[node] == pytest.approx(tree.tree[2 * node] + tree.tree[2 * node + 1])
    # prefix sums: [0,2) -> 0, [2,3) -> 1, [3,4) -> 2, [4,11) -> 3, [11,11.5) -> 4
    np.testing.assert_array_equal(tree.find(np.array([0.0, 1.99, 2.0, 3.5, 4.0, 10.99, 11.2])), [0, 0, 1, 2, 3, 3, 4])


# ---------------------------------------------------------------------------------- proportional
def test_proportional_replay_samples_by_priority_and_weights_by_inverse_probability():
    buffer = PrioritizedReplayBuffer(8, (1,), gamma=0.9, alpha=0.5, eps=0.0, rng=np.random.default_rng(1))
    fill(buffer, 4)
    td = np.array([1.0, 4.0, 9.0, 0.0])  # priorities^0.5 = 1, 2, 3, 0
    buffer.update_priorities(np.arange(4), td)
    counts = np.zeros(4)
    batch = None
    for _ in range(2000):
        batch = buffer.sample(32, beta=0.5)
        counts += np.bincount(batch.indices, minlength=4)
    np.testing.assert_allclose(counts / counts.sum(), [1 / 6, 2 / 6, 3 / 6, 0.0], atol=0.01)
    # w_i = (N P(i))^-beta / max w over the batch
    probs = np.array([1, 2, 3, 0]) / 6
    w = (4 * probs[batch.indices]) ** -0.5
    np.testing.assert_allclose(batch.weights.numpy(), w / w.max(), rtol=1e-5)
    # the observation of a sampled row is the index of its transition
    np.testing.assert_array_equal(batch.obs[:, 0].numpy(), batch.indices)


def test_new_transitions_get_the_largest_priority_seen():
    buffer = PrioritizedReplayBuffer(8, (1,), alpha=1.0, eps=0.0, rng=np.random.default_rng(0))
    fill(buffer, 2)
    buffer.update_priorities(np.array([0, 1]), np.array([5.0, 0.5]))
    fill(buffer, 1)
    assert buffer.tree.get(np.array([2]))[0] == pytest.approx(5.0)


# ---------------------------------------------------------------------------------- rank-based
def test_rank_based_replay_samples_rank_k_with_probability_k_to_minus_alpha():
    alpha = 0.7
    buffer = RankPrioritizedReplayBuffer(16, (1,), alpha=alpha, sort_every=1, rng=np.random.default_rng(2))
    fill(buffer, 6)
    td = np.array([0.3, 5.0, 0.1, 2.0, 1.0, 0.2])  # ranks: idx1=1, idx3=2, idx4=3, idx0=4, idx5=5, idx2=6
    buffer.update_priorities(np.arange(6), td)
    counts = np.zeros(6)
    for _ in range(3000):
        batch = buffer.sample(32, beta=1.0)
        counts += np.bincount(batch.indices, minlength=6)
    rank_of = np.array([4, 1, 6, 2, 3, 5])
    expected = rank_of.astype(float) ** -alpha
    np.testing.assert_allclose(counts / counts.sum(), expected / expected.sum(), atol=0.01)
    probs = expected[batch.indices] / expected.sum()
    w = (6 * probs) ** -1.0
    np.testing.assert_allclose(batch.weights.numpy(), w / w.max(), rtol=1e-5)


def test_rank_based_replay_ranks_fresh_transitions_first_between_sorts():
    buffer = RankPrioritizedReplayBuffer(16, (1,), alpha=1.0, sort_every=10**6, rng=np.random.default_rng(0))
    fill(buffer, 4)
    buffer.sample(4)  # sorts once
    buffer.update_priorities(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]))
    fill(buffer, 1)  # index 4: fresh, rank 1 until the next sort
    counts = np.zeros(5)
    for _ in range(2000):
        counts += np.bincount(buffer.sample(16).indices, minlength=5)
    assert counts.argmax() == 4
    assert counts[4] / counts.sum() == pytest.approx(1 / sum(1 / k for k in range(1, 6)), abs=0.02)


# ---------------------------------------------------------------------------------- n-step
def test_n_step_returns_stop_at_terminations_and_bootstrap_at_truncations():
    gamma = 0.5
    rewards = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    terminated = np.array([False, True, False, False, False, False])  # episode 1 ends after step 1
    truncated = np.array([False, False, False, False, True, False])  # episode 2 cut after step 4
    G, disc, last = n_step_returns(rewards, terminated, truncated, gamma, n=3)
    np.testing.assert_allclose(G, [1 + 0.5 * 2, 2, 4 + 0.5 * 8 + 0.25 * 16, 8 + 0.5 * 16, 16, 32])
    np.testing.assert_allclose(disc, [0.0, 0.0, 0.125, 0.25, 0.5, 0.5])
    np.testing.assert_array_equal(last, [1, 1, 4, 4, 4, 5])


def test_n_step_of_one_is_the_td_target():
    G, disc, last = n_step_returns(np.array([1.0, 2.0]), np.array([False, True]), np.array([False, False]), 0.9, 1)
    np.testing.assert_allclose(G, [1.0, 2.0])
    np.testing.assert_allclose(disc, [0.9, 0.0])


@pytest.mark.parametrize("n", [1, 3])
def test_replay_stores_the_same_n_step_transitions_as_the_trajectory_math(n):
    rng = np.random.default_rng(3)
    T, gamma = 60, 0.9
    obs = rng.normal(size=(T + 1, 2)).astype(np.float32)
    rewards = rng.normal(size=T).astype(np.float32)
    terminated = rng.random(T) < 0.1
    truncated = ~terminated & (rng.random(T) < 0.1)
    truncated[-1] = not terminated[-1]
    buffer = ReplayBuffer(100, (2,), gamma=gamma, n_step=n)
    for t in range(T):
        buffer.add(obs[t][None], np.array([t]), rewards[t : t + 1], obs[t + 1][None], terminated[t : t + 1],
                   truncated[t : t + 1])
    assert len(buffer) == T
    G, disc, last = n_step_returns(rewards, terminated, truncated, gamma, n)
    order = np.argsort(buffer.actions[:T])  # action = start step of the stored transition
    np.testing.assert_allclose(buffer.rewards[order], G, rtol=1e-5)
    np.testing.assert_allclose(buffer.discounts[order], disc, rtol=1e-5)
    np.testing.assert_allclose(buffer.next_obs[order], obs[last + 1])
    np.testing.assert_allclose(buffer.obs[order], obs[:T])


# ---------------------------------------------------------------------------------- general
def test_uniform_replay_overwrites_oldest_and_keeps_shapes_and_dtypes():
    buffer = ReplayBuffer(5, (3,), action_shape=(2,), action_dtype=np.float32, n_envs=2,
                          rng=np.random.default_rng(0))
    for t in range(4):  # 8 transitions from 2 envs into capacity 5
        obs = np.full((2, 3), t, dtype=np.float32)
        buffer.add(obs, np.full((2, 2), 0.5, dtype=np.float32), np.ones(2, dtype=np.float32), obs + 1,
                   np.array([False, True]), np.array([False, False]))
    assert len(buffer) == 5
    assert sorted(buffer.obs[:, 0].tolist()) == [1, 2, 2, 3, 3]  # t=0 and one of t=1 overwritten
    batch = buffer.sample(7)
    assert batch.obs.shape == (7, 3) and batch.actions.shape == (7, 2) and batch.actions.dtype == torch.float32
    assert batch.weights is None
    assert np.all(np.isclose(batch.discounts.numpy(), 0.0) | np.isclose(batch.discounts.numpy(), 0.99))


@pytest.mark.parametrize("kind", ["uniform", "proportional", "rank"])
def test_state_dict_round_trip_continues_identically(kind):
    def make(seed):
        return make_replay_buffer(kind, 32, (1,), gamma=0.9, n_step=3, rng=np.random.default_rng(seed), alpha=0.6,
                                  eps=1e-6, sort_every=3)

    a = make(0)
    fill(a, 40)
    a.update_priorities(np.arange(10), np.linspace(0.1, 3.0, 10))
    a.sample(8)
    b = make(99)
    b.load_state_dict(a.state_dict())
    b.rng.bit_generator.state = a.rng.bit_generator.state
    fill(a, 5)
    fill(b, 5)
    for _ in range(4):
        x, y = a.sample(8, beta=0.7), b.sample(8, beta=0.7)
        np.testing.assert_array_equal(x.indices, y.indices)
        torch.testing.assert_close(x.rewards, y.rewards)
        if x.weights is not None:
            torch.testing.assert_close(x.weights, y.weights)
        a.update_priorities(x.indices, np.ones(8))
        b.update_priorities(y.indices, np.ones(8))


def test_unknown_replay_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="uniform, proportional, rank"):
        make_replay_buffer("prioritised", 10, (1,))


def test_sampling_an_empty_buffer_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(4, (1,)).sample(2)
