"""What the continuous-action off-policy agents share (DDPG, TD3, SAC, D4PG).

They all run :class:`~classic_rl.agents.off_policy.OffPolicyAgent`'s one training loop and add:

- actions in a normalised space: networks see ``u`` in ``[-1, 1]^d``, the environment gets
  ``a = center + half_range * u`` (SB3 does the same, so noise scales mean the same thing);
- an ensemble of critics ``Q_k(s, u)`` evaluated as one batched network (:class:`GroupedMLP`);
- flat parameter tensors (:func:`classic_rl.nets.flat_parameters`) so Adam, zeroing gradients
  and Polyak updates ``theta' <- (1 - tau) theta' + tau theta`` are one tensor op each; targets
  are updated inside ``train_step`` at the algorithm's own rhythm (every step for DDPG and SAC,
  with the delayed actor for TD3), as in Stable-Baselines3.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from classic_rl.agents.off_policy import OffPolicyAgent, OffPolicyConfig
from classic_rl.fused.adam import make_adam
from classic_rl.nets import flat_parameters, zero_flat_grad_


class GroupedMLP(nn.Module):
    """``n`` independent ReLU MLPs evaluated with one batched matmul per layer.

    Layer weights have shape (n, in, out). ``forward`` takes (B, in), shared by every member, or
    (n, B, in), one input per member, and returns (n, B, out). Mathematically these are ``n``
    separate networks (each has its own parameters and gradients); batching them keeps the cost
    of twin critics (or one critic per agent) at one kernel launch per layer. Init as ``nn.Linear``.
    """

    def __init__(self, n: int, in_dim: int, hidden: list[int], out_dim: int) -> None:
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            bound = 1.0 / np.sqrt(a)
            weight = nn.Parameter(torch.empty(n, a, b).uniform_(-bound, bound))
            bias = nn.Parameter(torch.empty(n, 1, b).uniform_(-bound, bound))
            self.register_parameter(f"w{i}", weight)
            self.register_parameter(f"b{i}", bias)
            layers.append((weight, bias))
        # Parameters are only ever changed in place (optimizers, load_state_dict, Polyak updates,
        # flat_parameters' re-homing keeps the objects), so a plain tuple skips nn.Module lookups.
        self._layers = tuple(layers)
        self.n = n

    def forward(self, x: torch.Tensor, members: slice | None = None) -> torch.Tensor:
        """Outputs of all members, or of ``members`` only (e.g. ``slice(0, 1)``: TD3's Q1)."""
        layers = self._layers if members is None else tuple((w[members], b[members]) for w, b in self._layers)
        n = layers[0][0].shape[0]
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(n, -1, -1)
        last = len(layers) - 1
        for i, (w, b) in enumerate(layers):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = torch.relu(x)
        return x

    def forward_numpy(self, x: np.ndarray) -> np.ndarray:
        """(n, in) -> (n, out): one input row per member, in numpy, without autograd (fast acting)."""
        last = len(self._layers) - 1
        for i, (w, b) in enumerate(self._layers):
            x = np.matmul(x[:, None, :], w.detach().numpy())[:, 0, :] + b.detach().numpy()[:, 0, :]
            if i < last:
                x = np.maximum(x, 0.0)
        return x

    def clip_grad_norm_(self, max_norm: float) -> None:
        """Clip each member's gradient to norm ``max_norm`` separately (as n separate networks would)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norms = torch.sqrt(sum(g.pow(2).flatten(1).sum(1) for g in grads))
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))


class QEnsemble(GroupedMLP):
    """``n`` critics ``Q_k(s, u)`` (or ``n`` heads of ``out_dim`` values, e.g. D4PG's atoms)."""

    def __init__(self, n: int, obs_dim: int, act_dim: int, hidden: list[int], out_dim: int = 1) -> None:
        super().__init__(n, obs_dim + act_dim, hidden, out_dim)
        self.obs_dim = obs_dim
        self.out_dim = out_dim

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, members: slice | None = None) -> torch.Tensor:
        """(n, B) values, or (n, B, out_dim) when ``out_dim > 1``."""
        out = super().forward(torch.cat([obs, actions], dim=-1), members)
        return out.squeeze(-1) if self.out_dim == 1 else out


@dataclass
class ContinuousConfig(OffPolicyConfig):
    """Settings of the continuous-control agents; defaults follow Stable-Baselines3's TD3/SAC."""

    buffer_size: int = 1_000_000
    batch_size: int = 256
    learning_starts: int = 100
    train_freq: int = 1
    gradient_steps: int = 1
    tau: float = 0.005
    learning_rate: float = 1e-3
    """Adam step size of the actor and the critics."""
    hidden: list[int] = field(default_factory=lambda: [400, 300])
    """Hidden layer sizes of the actor and of every critic (ReLU)."""

    def validate(self) -> None:
        super().validate()
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"hidden={self.hidden!r} needs at least one positive layer size, e.g. [256, 256]")


class NumpyMLP:
    """Forward pass of a ``classic_rl.nets.mlp`` (Linear and ReLU layers) in numpy, for acting.

    It holds numpy views of the module's weights, so it always sees the current values: every
    update (Adam on flat parameters, ``load_state_dict``) writes them in place. One observation
    through a small MLP costs a few microseconds this way, against tens for torch's dispatch.
    """

    def __init__(self, module: nn.Sequential) -> None:
        self.layers = []
        for layer in module:
            if isinstance(layer, nn.Linear):
                self.layers.append((layer.weight.detach().numpy().T, layer.bias.detach().numpy()))
            elif not isinstance(layer, nn.ReLU):
                raise ValueError(f"NumpyMLP supports Linear and ReLU layers, got {type(layer).__name__}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < last:
                x = np.maximum(x, 0.0)
        return x


class Flat:
    """A module's parameters as one flat tensor with its Adam optimizer (see the module docstring).

    ``backend`` picks the optimizer class (:func:`classic_rl.fused.adam.make_adam`: the same numbers either way).
    """

    def __init__(self, module: nn.Module, lr: float | None = None, backend: str = "fused") -> None:
        self.module = module
        self.param = flat_parameters(module)
        self.optimizer = make_adam(self.param, lr=lr, backend=backend) if lr is not None else None

    def step(self, loss: torch.Tensor) -> None:
        """Zero the gradient, backpropagate ``loss``, take one Adam step."""
        zero_flat_grad_(self.param)
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def polyak_(self, source: Flat, tau: float) -> None:
        """``self <- (1 - tau) self + tau source`` (the target-network update)."""
        self.param.lerp_(source.param, tau)


def online_and_target(module: nn.Module, lr: float, backend: str = "fused") -> tuple[Flat, Flat]:
    """A trainable flat module and its frozen target copy (initialised to the same weights)."""
    target = copy.deepcopy(module).requires_grad_(False)
    return Flat(module, lr, backend), Flat(target)


class ContinuousAgent(OffPolicyAgent):
    """Base of DDPG, TD3, SAC and D4PG: Box actions, normalised to [-1, 1] for the networks."""

    Config = ContinuousConfig
    action_kinds = ("continuous",)
    default_steps = 100_000

    def setup(self) -> None:
        self.config.validate()
        super().setup()
        space = self.env.action_space
        low, high = np.asarray(space.low, dtype=np.float64), np.asarray(space.high, dtype=np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError(f"{self.algo} needs finite action bounds, but {self.env_id} has {space}")
        if not isinstance(self.env.observation_space, gym.spaces.Box | gym.spaces.Discrete):
            raise ValueError(f"{self.algo} needs a Box or Discrete observation space, got {self.env.observation_space}")
        self.act_shape = tuple(space.shape)
        self.act_dim = int(np.prod(space.shape))
        self.obs_dim = int(np.prod(self.obs_shape))
        self.action_center = ((high + low) / 2).reshape(-1)
        self.action_half = ((high - low) / 2).reshape(-1)
        self._center_t = torch.as_tensor(self.action_center, dtype=torch.float32)
        self._half_t = torch.as_tensor(self.action_half, dtype=torch.float32)
        self.build()

    def build(self) -> None:
        """Build networks and optimizers (subclasses)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ actions
    def to_env_actions(self, u: np.ndarray) -> np.ndarray:
        """Normalised actions (n, d) in [-1, 1] -> environment actions (n, *shape)."""
        a = self.action_center + self.action_half * u
        return a.reshape(len(u), *self.act_shape).astype(np.float32)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Replayed environment actions -> [-1, 1] (replay stores what the environment received)."""
        return (actions.reshape(actions.shape[0], -1) - self._center_t) / self._half_t

    def policy_actions(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """Normalised actions (n, d) for a batch of flat float32 observations (n, obs_dim) (subclasses)."""
        raise NotImplementedError

    def select_action(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        return self.to_env_actions(self.policy_actions(np.asarray(obs, dtype=np.float32).reshape(len(obs), -1), explore))

    def act(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        return self.select_action(self.encode(obs)[None], explore=not deterministic)[0]


def weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean over the batch, with prioritized replay's importance weights when there are any."""
    return per_sample.mean() if weights is None else (weights * per_sample).mean()
