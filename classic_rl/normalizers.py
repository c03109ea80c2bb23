"""Running statistics for normalising observations and rewards.

:class:`RunningMeanStd` is the one running mean/variance of the project: PPO-family observation
and reward normalisation (SB3's ``VecNormalize`` semantics) and ARS V2's state filter both
keep one. Batches are merged with Chan et al.'s parallel formula, so statistics gathered in
pieces (rollout chunks, worker processes sending sums) equal those of the whole stream.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class RunningMeanStd:
    """Running mean and variance of a stream of batches (Chan et al.'s parallel update).

    ``epsilon`` is the initial pseudo-count of the prior (mean 0, variance 1): SB3 uses 1e-4 so
    the first normalisation does not divide by zero; ARS starts from 0 (no prior).
    """

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = float(epsilon)

    def update(self, batch: np.ndarray) -> None:
        """Merge a batch of samples (rows)."""
        batch = np.asarray(batch, dtype=np.float64)
        self.update_from_moments(batch.mean(axis=0), batch.var(axis=0), batch.shape[0])

    def update_from_sums(self, count: float, total: np.ndarray, total_sq: np.ndarray) -> None:
        """Merge a batch given by its size, sum and sum of squares (what a worker process sends)."""
        if count <= 0:
            return
        mean = total / count
        self.update_from_moments(mean, np.maximum(total_sq - count * mean**2, 0.0) / count, count)

    def update_from_moments(self, b_mean: np.ndarray, b_var: np.ndarray, b_count: float) -> None:
        """Merge a batch given by its mean, (population) variance and size."""
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var = m2 / total
        self.count = total

    def normalize(self, x: np.ndarray, clip: float) -> np.ndarray:
        """``clip((x - mean) / sqrt(var + 1e-8), -clip, clip)`` as float32."""
        return np.clip((x - self.mean) / np.sqrt(self.var + 1e-8), -clip, clip).astype(np.float32)

    @property
    def std(self) -> np.ndarray:
        """Standard deviation; 1 where it is unknown (fewer than 2 samples) or (near) zero, so such
        inputs pass unscaled."""
        if self.count < 2:
            return np.ones_like(self.mean)
        std = np.sqrt(self.var)
        return np.where(std < 1e-8, 1.0, std)

    # ------------------------------------------------------------------ saving
    def state(self, prefix: str) -> dict[str, Tensor]:
        """Tensors ``{prefix}.mean``, ``{prefix}.var``, ``{prefix}.count`` for ``model.safetensors``."""
        return {
            f"{prefix}.mean": torch.as_tensor(self.mean),
            f"{prefix}.var": torch.as_tensor(self.var),
            f"{prefix}.count": torch.tensor(self.count, dtype=torch.float64),
        }

    def load(self, tensors: dict[str, Tensor], prefix: str) -> None:
        """Take over the statistics saved by :meth:`state` (absent keys leave them unchanged)."""
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
