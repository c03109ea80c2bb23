"""Networks shared by the deep agents: MLP trunks, the Nature-DQN CNN, noisy layers and Q heads.

The one activation table (:data:`ACTIVATIONS`: layer class, torch function and numpy function of
each name) and the one numpy MLP forward (:func:`numpy_forward`, which every agent acts through
when it acts in numpy) live here too.

Also :func:`flat_parameters`, which re-homes a module's parameters in one contiguous tensor so
that Adam, gradient clipping and target-network updates cost one tensor op each instead of one
per layer (on a CPU with small networks that per-tensor overhead is a large share of the update).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _np_relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0, out=x)


def _np_tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x, out=x)


def _np_elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


def _np_silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class Activation:
    """One activation in its three forms: a layer class (``mlp``), a torch function (layers called
    one by one) and a numpy function (acting without torch; it may overwrite its argument, which
    is always a fresh layer output)."""

    module: type[nn.Module]
    torch_fn: Callable[[torch.Tensor], torch.Tensor]
    numpy_fn: Callable[[np.ndarray], np.ndarray]


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(nn.ReLU, torch.relu, _np_relu),
    "tanh": Activation(nn.Tanh, torch.tanh, _np_tanh),
    "elu": Activation(nn.ELU, F.elu, _np_elu),
    "silu": Activation(nn.SiLU, F.silu, _np_silu),
}
"""The one activation table: every network here names its activation by one of these keys."""


def get_activation(name: str) -> Activation:
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def activation(name: str) -> type[nn.Module]:
    """The layer class of activation ``name``."""
    return get_activation(name).module


def _activation_of_module(module: nn.Module) -> Activation | None:
    for act in ACTIVATIONS.values():
        if type(module) is act.module:
            return act
    return None


# ---------------------------------------------------------------------------------- numpy forward
NumpyLayer = tuple[np.ndarray, "np.ndarray | None", "Callable[[np.ndarray], np.ndarray] | None"]
"""``(W, b, act)``: ``x -> act(x @ W + b)``; ``W`` is ``(in, out)`` (or ``(n, in, out)`` for ``n``
batched networks), ``b`` and ``act`` may be None."""


def numpy_forward(layers: Sequence[NumpyLayer], x: np.ndarray) -> np.ndarray:
    """The one numpy MLP forward: ``x -> act_k(... act_1(x @ W_1 + b_1) ... @ W_k + b_k)``.

    Why numpy: acting on one observation per environment step is a dozen tiny torch calls whose
    fixed overhead dwarfs the arithmetic, which numpy does without that overhead (measured in
    docs/benchmarks.md). Training still runs in torch.
    """
    for weight, bias, act in layers:
        x = x @ weight
        if bias is not None:
            x = x + bias
        if act is not None:
            x = act(x)
    return x


def numpy_layers_from_weights(
    weights: Sequence[np.ndarray], act: str | None = "relu", out_act: str | None = None, bias: bool = True,
) -> list[NumpyLayer]:
    """Layers from torch-layout weights ``[W_1 (out, in), b_1, W_2, b_2, ...]`` (``bias=False``:
    ``[W_1, W_2, ...]``): ``act`` after every hidden layer, ``out_act`` after the last one."""
    step = 2 if bias else 1
    n = len(weights) // step
    hidden = get_activation(act).numpy_fn if act is not None else None
    last = get_activation(out_act).numpy_fn if out_act is not None else None
    return [(weights[step * i].T, weights[step * i + 1] if bias else None, hidden if i < n - 1 else last)
            for i in range(n)]


def numpy_layers(module: nn.Module) -> list[NumpyLayer]:
    """Zero-copy numpy views of an ``nn.Linear`` or an ``nn.Sequential`` of Linear and activation
    layers (what :func:`mlp` builds). The views share memory with the parameters, so they see
    every in-place update (optimizer steps, ``load_state_dict``); rebuild them after anything
    that gives the parameters new memory (``flat_parameters``, ``vector_to_parameters``)."""
    layers: list[list[Any]] = []
    for m in [module] if isinstance(module, nn.Linear) else list(module):
        if type(m) is nn.Linear:
            layers.append([m.weight.detach().numpy().T, m.bias.detach().numpy() if m.bias is not None else None, None])
            continue
        act = _activation_of_module(m)
        if act is None or not layers or layers[-1][2] is not None:
            raise TypeError(f"numpy forward cannot run a {type(m).__name__} layer here (Linear and "
                            f"{', '.join(a.module.__name__ for a in ACTIVATIONS.values())} after a Linear)")
        layers[-1][2] = act.numpy_fn
    return [tuple(layer) for layer in layers]


class NumpyMLP:
    """An MLP module's forward pass in numpy, for acting (see :func:`numpy_forward`)."""

    def __init__(self, module: nn.Module) -> None:
        self.layers = numpy_layers(module)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return numpy_forward(self.layers, x)


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int | None = None,
    act: str = "relu",
    out_gain: float | None = None,
    orthogonal: bool = False,
    linear: type[nn.Module] = nn.Linear,
) -> nn.Sequential:
    """``in -> hidden[0] -> ... -> hidden[-1] (-> out)`` with ``act`` between layers.

    ``orthogonal=True`` uses orthogonal init with gain sqrt(2) for hidden layers and ``out_gain``
    for the output layer (the PPO implementation detail; 0.01 for policy logits, 1 for values).
    ``linear`` is the layer class (:class:`NoisyLinear` for noisy nets).
    """
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for a, b in zip(dims[:-1], dims[1:]):
        layer = linear(a, b)
        if orthogonal:
            nn.init.orthogonal_(layer.weight, gain=2**0.5)
            nn.init.zeros_(layer.bias)
        layers += [layer, activation(act)()]
    if out_dim is not None:
        layer = linear(dims[-1], out_dim)
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


# ---------------------------------------------------------------------------------- noisy nets
class NoisyLinear(nn.Module):
    """Factorised Gaussian noisy linear layer (Fortunato et al. 2018, "Noisy Networks for Exploration").

    ``y = (mu_w + sigma_w * eps_w) x + mu_b + sigma_b * eps_b`` with factorised noise
    ``eps_w = f(eps_out) f(eps_in)^T``, ``eps_b = f(eps_out)``, ``f(x) = sign(x) sqrt(|x|)``.
    The noise is resampled by :meth:`reset_noise`; in eval mode the layer uses the means only,
    so greedy evaluation is deterministic. The learned sigmas let the agent anneal its own
    exploration, which replaces epsilon-greedy.
    """

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_sigma = nn.Parameter(torch.empty(out_features))
        self.register_buffer("eps_in", torch.zeros(in_features))
        self.register_buffer("eps_out", torch.zeros(out_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight_mu, -bound, bound)
        nn.init.uniform_(self.bias_mu, -bound, bound)
        nn.init.constant_(self.weight_sigma, sigma0 / math.sqrt(in_features))
        nn.init.constant_(self.bias_sigma, sigma0 / math.sqrt(in_features))
        self.reset_noise()

    @property
    def weight(self) -> torch.Tensor:  # so generic init code (mlp orthogonal=True) can reach it
        return self.weight_mu

    @property
    def bias(self) -> torch.Tensor:
        return self.bias_mu

    @torch.no_grad()
    def reset_noise(self) -> None:
        x = torch.randn(self.in_features + self.out_features)
        x = x.sign().mul_(x.abs().sqrt_())  # f(x) = sign(x) sqrt(|x|)
        self.eps_in.copy_(x[: self.in_features])
        self.eps_out.copy_(x[self.in_features :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.weight_mu, self.bias_mu)
        weight = torch.addcmul(self.weight_mu, self.weight_sigma, torch.outer(self.eps_out, self.eps_in))
        bias = torch.addcmul(self.bias_mu, self.bias_sigma, self.eps_out)
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def reset_noise(module: nn.Module) -> None:
    """Resample the noise of every :class:`NoisyLinear` inside ``module``."""
    for layer in module.modules():
        if isinstance(layer, NoisyLinear):
            layer.reset_noise()


# ---------------------------------------------------------------------------------- image trunk
class NatureCNN(nn.Module):
    """The Nature-DQN torso (Mnih et al. 2015): 3 convs and a 512-unit layer.

    Takes ``(B, C, H, W)`` uint8 frames (e.g. 4 stacked 84x84 Atari frames), scales them to [0, 1].
    """

    def __init__(self, obs_shape: Sequence[int], features: int = 512, linear: type[nn.Module] = nn.Linear) -> None:
        super().__init__()
        channels = int(obs_shape[0])
        self.convs = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n_flat = self.convs(torch.zeros(1, *obs_shape)).shape[1]
        self.fc = nn.Sequential(linear(n_flat, features), nn.ReLU())
        self.out_dim = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(x.float() / 255.0))


def is_image_space(space) -> bool:
    """A (C, H, W) uint8 Box: what the Atari wrappers produce."""
    import gymnasium as gym

    return isinstance(space, gym.spaces.Box) and len(space.shape) == 3 and space.dtype == np.uint8


# ---------------------------------------------------------------------------------- Q networks
def dueling_aggregate(value: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """Dueling head (Wang et al. 2016): ``Q(s,a) = V(s) + A(s,a) - mean_a A(s,a)``.

    ``value`` is ``(B, 1, ...)`` and ``advantage`` ``(B, A, ...)``; subtracting the mean advantage
    makes V and A identifiable (otherwise any constant could move between them).
    """
    return value + advantage - advantage.mean(dim=1, keepdim=True)


class QNetwork(nn.Module):
    """Action values for discrete actions; one class for every DQN variant.

    Hidden ``layers`` (over flat observations, or after :class:`NatureCNN` for images) then a head:
    plain (``A`` outputs) or dueling (``V`` and ``A`` streams, :func:`dueling_aggregate`). With
    ``n_atoms > 1`` each action gets ``n_atoms`` logits of a categorical return distribution
    (C51); :meth:`q_values` turns them into expected values on ``support``. With ``noisy=True``
    every fully connected layer is a :class:`NoisyLinear` (the CNN's convs stay deterministic).
    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        n_actions: int,
        hidden: Sequence[int] = (64, 64),
        act: str = "relu",
        dueling: bool = False,
        noisy: bool = False,
        noisy_std: float = 0.5,
        n_atoms: int = 1,
        support: torch.Tensor | None = None,
        image: bool = False,
    ) -> None:
        super().__init__()
        if n_atoms > 1 and (support is None or support.numel() != n_atoms):
            raise ValueError(f"n_atoms={n_atoms} needs a support tensor of {n_atoms} atoms")
        linear = (lambda i, o: NoisyLinear(i, o, noisy_std)) if noisy else nn.Linear
        self.n_actions, self.n_atoms, self.dueling = int(n_actions), int(n_atoms), dueling
        self.act_fn = get_activation(act).torch_fn
        self.cnn = NatureCNN(obs_shape, linear=linear) if image else None  # Nature DQN: convs -> 512 units
        in_dim = self.cnn.out_dim if image else int(math.prod(obs_shape))
        dims = [in_dim, *hidden]
        # layers called one by one (no nn.Sequential): fewer Python calls per step on a CPU
        self.layers = nn.ModuleList([linear(a, b) for a, b in zip(dims[:-1], dims[1:])])
        self.advantage = linear(dims[-1], self.n_actions * self.n_atoms)
        self.value = linear(dims[-1], self.n_atoms) if dueling else None
        if support is not None:
            self.register_buffer("support", support.clone().float())
        else:
            self.support = None
        self.noisy = noisy
        self.numpy_ok = self.cnn is None
        self._act_name = act
        self._numpy_cache: tuple[tuple[int, ...], tuple] | None = None
        self._numpy_tensors: list[torch.Tensor] | None = None
        self._n_hidden = len(dims) - 1

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Q-values ``(B, A)``, or distribution logits ``(B, A, n_atoms)`` when ``n_atoms > 1``."""
        h = self.cnn(obs) if self.cnn is not None else (obs if obs.dim() == 2 else obs.flatten(1))
        for layer in self.layers:
            h = self.act_fn(layer(h))
        out = self.advantage(h)
        if self.n_atoms > 1:
            out = out.view(-1, self.n_actions, self.n_atoms)
        if self.value is not None:
            value = self.value(h).view(-1, 1, self.n_atoms) if self.n_atoms > 1 else self.value(h)
            out = dueling_aggregate(value, out)
        return out

    def q_values(self, obs: torch.Tensor) -> torch.Tensor:
        """Expected action values ``(B, A)``: ``sum_j p_j(s,a) z_j`` for a distributional head."""
        out = self(obs)
        if self.n_atoms > 1:
            return (out.softmax(-1) * self.support).sum(-1)
        return out

    def reset_noise(self) -> None:
        reset_noise(self)

    def _numpy_plan(self, params: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], list, list, list | None]:
        """(params, body layers, advantage head, value head or None) for :func:`numpy_forward`.

        For the module's own weights: numpy views (no copies), cached and rebuilt only when a
        parameter moved to new memory; for explicit ``params`` (noisy weights): built each call."""
        if params is not None:
            return self._plan_of(params)
        if self._numpy_tensors is None:  # the layers never change; their memory may (flat_parameters)
            self._numpy_tensors = [p for layer in [*self.layers, self.advantage, self.value] if layer is not None
                                   for p in (layer.weight, layer.bias)]
        key = tuple(p.data_ptr() for p in self._numpy_tensors)
        if self._numpy_cache is None or self._numpy_cache[0] != key:
            self._numpy_cache = (key, self._plan_of([p.detach().numpy() for p in self._numpy_tensors]))
        return self._numpy_cache[1]

    def _plan_of(self, params: list[np.ndarray]) -> tuple[list[np.ndarray], list, list, list | None]:
        j = 2 * self._n_hidden
        body = numpy_layers_from_weights(params[:j], self._act_name, out_act=self._act_name)
        value = numpy_layers_from_weights(params[j + 2 : j + 4], None) if self.dueling else None
        return params, body, numpy_layers_from_weights(params[j : j + 2], None), value

    @torch.no_grad()
    def noisy_params_numpy(self) -> list[np.ndarray]:
        """The weights with the current noise applied, as numpy arrays (copies) for
        :meth:`q_values_numpy`: lets noisy nets act in numpy while their noise is unchanged."""
        out = []
        for layer in [*self.layers, self.advantage, self.value]:
            if isinstance(layer, NoisyLinear):
                noise = torch.outer(layer.eps_out, layer.eps_in)
                out.append(torch.addcmul(layer.weight_mu, layer.weight_sigma, noise).numpy())
                out.append(torch.addcmul(layer.bias_mu, layer.bias_sigma, layer.eps_out).numpy())
            elif layer is not None:
                out += [layer.weight.detach().numpy(), layer.bias.detach().numpy()]
        return out

    def q_values_numpy(self, obs: np.ndarray, params: list[np.ndarray] | None = None) -> np.ndarray:
        """:meth:`q_values` computed with numpy (:func:`numpy_forward`) on the same weights (needs
        ``numpy_ok``). Noisy layers contribute their mean weights (the eval-mode output) unless
        ``params`` from :meth:`noisy_params_numpy` are given.
        """
        if not self.numpy_ok:
            raise ValueError("q_values_numpy needs an MLP body (no CNN)")
        _, body, head, value_head = self._numpy_plan(params)
        h = numpy_forward(body, obs.reshape(len(obs), -1))
        out = numpy_forward(head, h)
        if self.n_atoms > 1:
            out = out.reshape(len(h), self.n_actions, self.n_atoms)
        if self.dueling:
            value = numpy_forward(value_head, h)
            value = value.reshape(len(h), 1, self.n_atoms) if self.n_atoms > 1 else value
            out = value + out - out.mean(axis=1, keepdims=True)
        if self.n_atoms > 1:
            out = np.exp(out - out.max(axis=-1, keepdims=True))
            out = (out / out.sum(axis=-1, keepdims=True)) @ self.support.numpy()
        return out


# ---------------------------------------------------------------------------------- flat params
def flat_parameters(module: nn.Module) -> nn.Parameter:
    """Put all of ``module``'s parameters into one contiguous tensor; return it as a Parameter.

    Each parameter becomes a view into the flat tensor and each ``.grad`` a view into one flat
    gradient tensor (autograd accumulates into an existing ``.grad`` in place), so an optimizer
    built on ``[flat]``, gradient clipping and target copies (``target.copy_(online)``) are one
    op each. Zero the gradients with :func:`zero_flat_grad_`, which also re-attaches any
    per-layer ``.grad`` that ``module.zero_grad()`` (``set_to_none``) cut loose from the flat
    buffer, so such a call cannot silently freeze training; a parameter moved to new memory
    (``module.to(...)``, ``module.double()``) is refused there with an error.
    """
    params = list(module.parameters())
    if not params:
        raise ValueError("flat_parameters: the module has no parameters")
    total = sum(p.numel() for p in params)
    flat = torch.empty(total, dtype=params[0].dtype, device=params[0].device)
    grad = torch.zeros_like(flat)
    views = []
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            flat[offset : offset + n].copy_(p.reshape(-1))
            p.data = flat[offset : offset + n].view_as(p)
            p.grad = grad[offset : offset + n].view_as(p)
            views.append((p, p.data_ptr(), p.grad))
            offset += n
    flat_param = nn.Parameter(flat)
    flat_param.grad = grad
    flat_param._flat_views = tuple(views)  # (parameter, its data address, its gradient view)
    return flat_param


def zero_flat_grad_(flat: nn.Parameter) -> None:
    """Zero a :func:`flat_parameters` gradient before a backward pass, keeping every layer's ``.grad`` a view of it.

    ``module.zero_grad()`` sets the per-layer gradients to None; the next backward pass would then
    put them in fresh tensors and leave ``flat.grad`` (what the optimizer reads) at zero. Here each
    such gradient gets its view back, so the backward pass lands in ``flat.grad`` again.
    """
    flat.grad.zero_()
    for p, address, grad_view in flat._flat_views:
        if p.grad is not grad_view:
            p.grad = grad_view
        if p.data_ptr() != address:
            raise RuntimeError(
                "a parameter left its flat_parameters buffer (module.to(), .double() or a new .data?); "
                "build the agent again instead of moving its networks"
            )


def clip_grad_norm_flat(flat: nn.Parameter, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` for a flat parameter: scale g by min(1, max_norm / (||g|| + 1e-6)); returns ||g||."""
    norm = flat.grad.norm()
    if max_norm > 0:
        coef = max_norm / (norm + 1e-6)
        if coef.item() < 1.0:  # a factor clamped to 1 would leave g as it is: skip the pass over it
            flat.grad.mul_(coef)
    return norm


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging of target networks: ``theta' <- (1 - tau) theta' + tau theta`` (``tau = 1`` copies)."""
    targets, sources = list(target.parameters()), list(source.parameters())
    if len(targets) != len(sources):
        raise ValueError("soft_update: target and source networks have different parameter lists")
    if tau >= 1.0:
        torch._foreach_copy_(targets, sources)
    else:
        torch._foreach_lerp_(targets, sources, tau)
