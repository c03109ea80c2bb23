"""Networks shared by the deep agents: MLP trunks (and, with the DQN family, Q heads and CNNs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "silu": nn.SiLU}


def activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int | None = None,
    act: str = "relu",
    out_gain: float | None = None,
    orthogonal: bool = False,
) -> nn.Sequential:
    """``in -> hidden[0] -> ... -> hidden[-1] (-> out)`` with ``act`` between layers.

    ``orthogonal=True`` uses orthogonal init with gain sqrt(2) for hidden layers and ``out_gain``
    for the output layer (the PPO implementation detail; 0.01 for policy logits, 1 for values).
    """
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for a, b in zip(dims[:-1], dims[1:]):
        layer = nn.Linear(a, b)
        if orthogonal:
            nn.init.orthogonal_(layer.weight, gain=2**0.5)
            nn.init.zeros_(layer.bias)
        layers += [layer, activation(act)()]
    if out_dim is not None:
        layer = nn.Linear(dims[-1], out_dim)
        if orthogonal:
            nn.init.orthogonal_(layer.weight, gain=1.0 if out_gain is None else out_gain)
            nn.init.zeros_(layer.bias)
        layers.append(layer)
    return nn.Sequential(*layers)


def flat_dim(space) -> int:
    """Size of a flattened observation from a Box or Discrete space (Discrete is one-hot)."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.Box):
        return int(torch.tensor(space.shape).prod().item())
    raise ValueError(f"Unsupported observation space {space}; use a Box or Discrete space (or a wrapper)")
