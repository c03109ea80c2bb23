"""Actor-critic networks and action distributions for the policy-gradient agents.

One interface for every on-policy agent (REINFORCE, actor-critic, A2C, A3C, TRPO, PPO)::

    policy = ActorCritic(obs_space, action_space, PolicyConfig())
    dist, value = policy(obs)           # obs: float tensor (B, obs_dim); value: (B,)
    raw = dist.sample()                 # what buffers store and ``log_prob`` takes
    logp = dist.log_prob(raw)           # (B,)
    env_action = policy.to_env(raw)     # numpy actions the environment accepts

Action distributions (small classes instead of ``torch.distributions``: no argument
validation or broadcasting machinery on the hot path):

- :class:`Categorical` for ``Discrete`` actions (softmax over logits).
- :class:`DiagGaussian` for ``Box`` actions; the environment receives the sample clipped to the
  bounds (``action_bound="clip"``, as in SB3), the log-prob is that of the unclipped sample.
- :class:`TanhGaussian` for ``Box`` actions squashed into the bounds
  (``action_bound="tanh"``): ``a = low + (tanh(u) + 1) * (high - low) / 2`` with the
  change-of-variables log-density ``log p(a) = log N(u) - sum log|da/du|``.

The log-std is a free parameter (state-independent, ``state_dependent_std=False``) or a
second head of the actor (state-dependent, clamped to [-20, 2]).

Acting in rollouts goes through :class:`NumpyActor`, a numpy view of the same weights run by
:func:`classic_rl.nets.numpy_forward`: a torch call costs microseconds of dispatch before any
arithmetic, and acting on a small batch needs dozens of them per step; numpy does the same in a
fraction of the time. Its sampling and log-probabilities mirror the torch classes above and are
tested against them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from classic_rl.nets import flat_dim, mlp, numpy_forward, numpy_layers

__all__ = [
    "ACTION_BOUNDS",
    "ActorCritic",
    "Categorical",
    "DiagGaussian",
    "NumpyActor",
    "PolicyConfig",
    "TanhGaussian",
    "obs_to_numpy",
    "obs_to_tensor",
]

ACTION_BOUNDS = ("clip", "tanh")
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------- distributions
class Categorical:
    """Softmax policy over ``K`` actions; ``logits`` ``(B, K)``."""

    def __init__(self, logits: Tensor) -> None:
        self.logits = torch.log_softmax(logits, -1)  # normalised log-probabilities

    @property
    def probs(self) -> Tensor:
        return self.logits.exp()

    def sample(self) -> Tensor:
        """Inverse-CDF sampling: the first action whose cumulative probability exceeds u ~ U(0, 1)
        (one cumsum and one search instead of ``torch.multinomial``'s slower sampler; docs/benchmarks.md)."""
        cdf = self.probs.cumsum(-1)
        u = torch.rand((*cdf.shape[:-1], 1), dtype=cdf.dtype, device=cdf.device)
        return (cdf < u).sum(-1).clamp_(max=cdf.shape[-1] - 1)

    def mode(self) -> Tensor:
        return self.logits.argmax(-1)

    def log_prob(self, actions: Tensor) -> Tensor:
        return self.logits.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> Tensor:
        return -(self.probs * self.logits).sum(-1)

    def kl(self, other: Categorical) -> Tensor:
        """``KL(self || other) = sum_a p(a) (log p(a) - log q(a))``, per row."""
        return (self.probs * (self.logits - other.logits)).sum(-1)


class DiagGaussian:
    """Diagonal Gaussian ``N(mean, exp(log_std)^2)``; ``mean`` ``(B, D)``, ``log_std`` broadcastable."""

    def __init__(self, mean: Tensor, log_std: Tensor) -> None:
        self.mean = mean
        self.log_std = log_std.expand_as(mean)

    @property
    def std(self) -> Tensor:
        return self.log_std.exp()

    def sample(self) -> Tensor:
        return self.mean + self.std * torch.randn_like(self.mean)

    def mode(self) -> Tensor:
        return self.mean

    def log_prob(self, raw: Tensor) -> Tensor:
        z = (raw - self.mean) / self.std
        return (-0.5 * z.pow(2) - self.log_std - _HALF_LOG_2PI).sum(-1)

    def entropy(self) -> Tensor:
        return (0.5 + _HALF_LOG_2PI + self.log_std).sum(-1)

    def kl(self, other: DiagGaussian) -> Tensor:
        """``sum_d log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2``, per row."""
        var1, var2 = (2 * self.log_std).exp(), (2 * other.log_std).exp()
        return (
            other.log_std - self.log_std + (var1 + (self.mean - other.mean).pow(2)) / (2 * var2) - 0.5
        ).sum(-1)


class TanhGaussian(DiagGaussian):
    """A Gaussian over the pre-squash value ``u``, squashed into ``[low, high]``.

    ``sample``/``mode``/``log_prob`` work on ``u`` (no ``atanh`` of a saturated action);
    ``log_prob(u)`` is the density of the *squashed* action ``a = low + (tanh(u) + 1) * scale``:
    ``log p(a) = log N(u) - sum_d [log scale_d + log(1 - tanh(u_d)^2)]``, where
    ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`` is the stable form.
    ``entropy`` is the Gaussian's (the squashed entropy has no closed form); ``kl`` is exact,
    since KL divergence is invariant under the same invertible map applied to both.
    """

    def __init__(self, mean: Tensor, log_std: Tensor, low: Tensor, high: Tensor) -> None:
        super().__init__(mean, log_std)
        self.low = low
        self.scale = (high - low) / 2

    def log_prob(self, raw: Tensor) -> Tensor:
        log_det = torch.log(self.scale) + 2.0 * (math.log(2.0) - raw - F.softplus(-2.0 * raw))
        return super().log_prob(raw) - log_det.sum(-1)

    def squash(self, raw: Tensor) -> Tensor:
        return self.low + (torch.tanh(raw) + 1.0) * self.scale


# ----------------------------------------------------------------------------- networks
@dataclass
class PolicyConfig:
    """Network settings every policy-gradient agent shares (its ``Config`` extends this)."""

    hidden: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer sizes of the actor and of the critic MLPs."""
    activation: str = "tanh"
    """relu, tanh, elu or silu."""
    share_trunk: bool = False
    """One MLP trunk under both heads (else separate actor and critic networks, as SB3)."""
    ortho_init: bool = True
    """Orthogonal init, gain sqrt(2) hidden / 0.01 policy head / 1 value head."""
    log_std_init: float = 0.0
    """Initial log standard deviation of Gaussian policies."""
    state_dependent_std: bool = False
    """Gaussian log-std from a head of the actor (True) or one free parameter per dimension."""
    action_bound: str = "clip"
    """Box actions: 'clip' the Gaussian sample to the bounds, or 'tanh'-squash it into them."""

    def validate_policy(self) -> None:
        if self.action_bound not in ACTION_BOUNDS:
            raise ValueError(
                f"action_bound={self.action_bound!r} is not valid; use one of {', '.join(ACTION_BOUNDS)}"
            )
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"hidden={self.hidden!r} needs at least one positive layer size, e.g. [64, 64]")

    def validate(self) -> None:
        self.validate_policy()


def obs_to_numpy(obs: np.ndarray, space: gym.Space) -> np.ndarray:
    """Batched observations as float32 ``(B, obs_dim)``; Discrete states become one-hot."""
    if isinstance(space, gym.spaces.Discrete):
        idx = np.asarray(obs, dtype=np.int64).reshape(-1) - int(space.start)
        return np.eye(int(space.n), dtype=np.float32)[idx]
    out = np.asarray(obs, dtype=np.float32)
    return out.reshape(out.shape[0], -1) if out.ndim != 2 else out


def obs_to_tensor(obs: np.ndarray, space: gym.Space) -> Tensor:
    """Batched observations as a float tensor ``(B, obs_dim)``; Discrete states become one-hot."""
    if isinstance(space, gym.spaces.Discrete):
        idx = torch.as_tensor(np.asarray(obs, dtype=np.int64) - int(space.start)).reshape(-1)
        return F.one_hot(idx, int(space.n)).to(torch.float32)
    out = torch.as_tensor(obs, dtype=torch.float32)
    return out.reshape(out.shape[0], -1) if out.dim() != 2 else out


class ActorCritic(nn.Module):
    """Policy (and optional value) network for Discrete or Box action spaces.

    ``forward(obs) -> (dist, value)``; ``distribution(obs)`` and ``value(obs)`` run one half.
    ``critic=False`` builds no value network (REINFORCE without baseline); ``value`` is then 0.
    """

    def __init__(
        self, obs_space: gym.Space, action_space: gym.Space, config: PolicyConfig, critic: bool = True
    ) -> None:
        super().__init__()
        config.validate_policy()
        self.obs_space, self.action_space = obs_space, action_space
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if not self.discrete and not isinstance(action_space, gym.spaces.Box):
            raise ValueError(f"Unsupported action space {action_space}; use Discrete or Box")
        self.tanh = not self.discrete and config.action_bound == "tanh"
        self.state_dependent_std = (not self.discrete) and config.state_dependent_std
        in_dim = flat_dim(obs_space)
        act_dim = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        self.act_dim = act_dim
        head_out = act_dim * (2 if self.state_dependent_std else 1)
        hidden, act, ortho = list(config.hidden), config.activation, config.ortho_init
        self.has_critic = critic
        if config.share_trunk:
            self.trunk = mlp(in_dim, hidden, act=act, orthogonal=ortho)
            self.actor = _linear(hidden[-1], head_out, 0.01, ortho)
            self.critic = _linear(hidden[-1], 1, 1.0, ortho) if critic else None
        else:
            self.trunk = None
            self.actor = mlp(in_dim, hidden, head_out, act=act, out_gain=0.01, orthogonal=ortho)
            self.critic = mlp(in_dim, hidden, 1, act=act, out_gain=1.0, orthogonal=ortho) if critic else None
        if not self.discrete and not self.state_dependent_std:
            self.log_std = nn.Parameter(torch.full((act_dim,), float(config.log_std_init)))
        if not self.discrete:
            if self.state_dependent_std:
                with torch.no_grad():  # start the log-std head at log_std_init
                    last = self.actor if isinstance(self.actor, nn.Linear) else self.actor[-1]
                    last.bias[act_dim:] = float(config.log_std_init)
            low = torch.as_tensor(action_space.low, dtype=torch.float32).reshape(-1)
            high = torch.as_tensor(action_space.high, dtype=torch.float32).reshape(-1)
            if self.tanh and not (torch.isfinite(low).all() and torch.isfinite(high).all()):
                raise ValueError("action_bound='tanh' needs finite Box bounds; use action_bound='clip'")
            self.register_buffer("low", low, persistent=False)
            self.register_buffer("high", high, persistent=False)
            self._low_np, self._high_np = action_space.low.reshape(-1), action_space.high.reshape(-1)

    # ------------------------------------------------------------------ parts
    def actor_parameters(self) -> list[nn.Parameter]:
        """Parameters of the policy (trunk included when shared)."""
        critic = {id(p) for p in self.critic.parameters()} if self.critic is not None else set()
        return [p for p in self.parameters() if id(p) not in critic]

    def critic_parameters(self) -> list[nn.Parameter]:
        return list(self.critic.parameters()) if self.critic is not None else []

    def _features(self, obs: Tensor) -> Tensor:
        return run_mlp(self.trunk, obs) if self.trunk is not None else obs

    def _dist(self, out: Tensor):
        if self.discrete:
            return Categorical(out)
        if self.state_dependent_std:
            mean, log_std = out.split(self.act_dim, dim=-1)
            log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        else:
            mean, log_std = out, self.log_std
        if self.tanh:
            return TanhGaussian(mean, log_std, self.low, self.high)
        return DiagGaussian(mean, log_std)

    def distribution(self, obs: Tensor):
        """The action distribution alone (TRPO's policy step, acting without a critic)."""
        return self._dist(run_mlp(self.actor, self._features(obs)))

    def value(self, obs: Tensor) -> Tensor:
        """``V(obs)``, shape ``(B,)`` (zeros without a critic)."""
        if self.critic is None:
            return torch.zeros(obs.shape[0], dtype=obs.dtype, device=obs.device)
        return run_mlp(self.critic, self._features(obs)).squeeze(-1)

    def forward(self, obs: Tensor):
        feats = self._features(obs)
        dist = self._dist(run_mlp(self.actor, feats))
        if self.critic is None:
            return dist, torch.zeros(obs.shape[0], dtype=obs.dtype, device=obs.device)
        return dist, run_mlp(self.critic, feats).squeeze(-1)

    def numpy_actor(self) -> NumpyActor:
        """A numpy view of the current weights for the rollout loop (rebuild it after updates
        that replace parameter storage, e.g. ``vector_to_parameters``)."""
        return NumpyActor(self)

    # ------------------------------------------------------------------ actions
    def to_env(self, raw: Tensor) -> np.ndarray:
        """Raw samples ``(B, ...)`` -> numpy actions for the vector env (clipped or squashed)."""
        raw = raw.detach()
        if self.discrete:
            return raw.numpy()
        if self.tanh:
            scale = (self.high - self.low) / 2
            return (self.low + (torch.tanh(raw) + 1.0) * scale).numpy().reshape(-1, *self.action_space.shape)
        return np.clip(raw.numpy(), self._low_np, self._high_np).reshape(-1, *self.action_space.shape)


def run_mlp(net: nn.Module, x: Tensor) -> Tensor:
    """``net(x)`` for a Linear or a Sequential of Linear and activation layers, calling
    ``F.linear`` directly: ``nn.Module.__call__``'s hook handling costs more than a 64-unit
    layer's arithmetic, and acting runs this once per environment step."""
    if type(net) is nn.Linear:
        return F.linear(x, net.weight, net.bias)
    for layer in net:
        x = F.linear(x, layer.weight, layer.bias) if type(layer) is nn.Linear else layer.forward(x)
    return x


def _linear(in_dim: int, out_dim: int, gain: float, ortho: bool) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    if ortho:
        nn.init.orthogonal_(layer.weight, gain=gain)
        nn.init.zeros_(layer.bias)
    return layer


# ----------------------------------------------------------------------------- numpy acting
class NumpyActor:
    """The acting half of an :class:`ActorCritic` in numpy (see the module docstring).

    ``act(obs, rng) -> (raw, log_prob, value)`` samples like ``dist.sample()`` and returns
    ``dist.log_prob(raw)`` and ``V(obs)``; ``to_env(raw)`` maps raw samples to env actions.
    """

    def __init__(self, policy: ActorCritic) -> None:
        self.trunk = numpy_layers(policy.trunk) if policy.trunk is not None else None
        self.actor = numpy_layers(policy.actor)
        self.critic = numpy_layers(policy.critic) if policy.critic is not None else None
        self.discrete, self.tanh = policy.discrete, policy.tanh
        self.state_dependent_std, self.act_dim = policy.state_dependent_std, policy.act_dim
        if not self.discrete:
            self.log_std = None if self.state_dependent_std else policy.log_std.detach().numpy()
            self.low, self.high = policy._low_np.astype(np.float32), policy._high_np.astype(np.float32)
            self.scale = (self.high - self.low) / 2
            self.log_scale = np.log(self.scale) if self.tanh else None
            self.shape = policy.action_space.shape

    def _features(self, obs: np.ndarray) -> np.ndarray:
        return numpy_forward(self.trunk, obs) if self.trunk is not None else obs

    def _value(self, feats: np.ndarray) -> np.ndarray:
        if self.critic is None:
            return np.zeros(feats.shape[0], dtype=np.float32)
        return numpy_forward(self.critic, feats)[:, 0]

    def value(self, obs: np.ndarray) -> np.ndarray:
        return self._value(self._features(obs))

    def act(self, obs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feats = self._features(obs)
        out = numpy_forward(self.actor, feats)
        if self.discrete:  # Categorical: inverse-CDF sample, log-softmax log-prob
            z = out - out.max(axis=1, keepdims=True)
            logp_all = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            u = rng.random((out.shape[0], 1), dtype=np.float32)
            raw = np.minimum((np.exp(logp_all).cumsum(axis=1) < u).sum(axis=1), out.shape[1] - 1)
            logp = logp_all[np.arange(out.shape[0]), raw]
        else:  # DiagGaussian / TanhGaussian, as in the torch classes
            if self.state_dependent_std:
                mean, log_std = (
                    out[:, : self.act_dim],
                    np.clip(out[:, self.act_dim :], LOG_STD_MIN, LOG_STD_MAX),
                )
            else:
                mean, log_std = out, self.log_std
            noise = rng.standard_normal(mean.shape, dtype=np.float32)
            raw = mean + np.exp(log_std) * noise
            logp = (-0.5 * noise**2 - log_std - _HALF_LOG_2PI).sum(axis=1)
            if self.tanh:
                log_det = self.log_scale + 2.0 * (math.log(2.0) - raw - np.logaddexp(0.0, -2.0 * raw))
                logp = logp - log_det.sum(axis=1)
        return raw, logp.astype(np.float32), self._value(feats)

    def to_env(self, raw: np.ndarray) -> np.ndarray | list:
        """Env actions: Python ints for Discrete (``Discrete.contains``' fast path), else clipped
        or squashed float32 arrays."""
        if self.discrete:
            return raw.tolist()
        if self.tanh:
            return (self.low + (np.tanh(raw) + 1.0) * self.scale).reshape(-1, *self.shape)
        return np.clip(raw, self.low, self.high).reshape(-1, *self.shape)
