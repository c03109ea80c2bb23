"""Backpropagation written out for plain MLPs: DQN's, DDPG's, TD3's and SAC's updates without autograd.

:class:`DenseStack` is the forward and backward pass of one MLP (Linear layers, ReLU or tanh
between them); :class:`MLPQRegression` is DQN's loss on top of it, and
:mod:`classic_rl.fused.critics` the continuous-control critics' and actors'. DQN's regression
``loss = mean_i l(Q(s_i, a_i) - y_i)`` (``l`` Huber or squared error) on an MLP ``h_0 = s``, ``h_k = f(W_k h_{k-1} + b_k)``, ``Q = W_L h_{L-1} + b_L`` has the textbook
gradient, computed here layer by layer from the output back::

    delta_L[i, a] = l'(Q(s_i, a_i) - y_i) / B   if a = a_i, else 0     (only the taken action)
    dW_k = delta_k^T h_{k-1},   db_k = sum_i delta_k[i]
    delta_{k-1} = (delta_k W_k) * f'(h_{k-1})       f' = 1[h > 0] for relu, 1 - h^2 for tanh
    l'(d) = clip(d, -1, 1) (Huber, beta 1) or 2 d (squared error)

Why by hand: on a CPU with a 256x256 network and one update per environment step (DQN on
Acrobot), autograd's graph building and bookkeeping, fresh allocations for every activation and
one badly shaped weight-gradient product are a large share of the update's time. Here
the activations live in buffers reused across updates, the gradients are written straight into
the network's (flat) ``.grad`` tensors, and each product takes its fastest layout. The result
equals autograd's up to float rounding (tested); anything this does not cover (CNN bodies,
dueling or distributional heads, noisy layers, DQN's importance weights) uses autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ANALYTIC_ACTIVATIONS = ("relu", "tanh")
ANALYTIC_LOSSES = ("huber", "mse")


def supports_analytic_grad(net: nn.Module, loss: str) -> bool:
    """Whether :class:`MLPQRegression` covers ``net`` (a :class:`classic_rl.nets.QNetwork`) and ``loss``."""
    return (
        getattr(net, "cnn", 1) is None and not net.dueling and not net.noisy and net.n_atoms == 1
        and getattr(net, "_act_name", None) in ANALYTIC_ACTIVATIONS and loss in ANALYTIC_LOSSES
        and all(p.grad is not None for p in net.parameters())  # flat_parameters gave them .grad views
    )


class MLPQRegression:
    """``loss(Q(s, a), y)`` and its gradient for a plain MLP QNetwork, written into the parameters' ``.grad``.

    The parameters must already hold gradient tensors (as :func:`classic_rl.nets.flat_parameters`
    leaves them); each call overwrites them (no zeroing needed). Weights are read in place, so
    optimizer steps between calls are seen.
    """

    def __init__(self, net: nn.Module, loss: str = "huber") -> None:
        if not supports_analytic_grad(net, loss):
            raise ValueError(
                "MLPQRegression needs a QNetwork with an MLP body, a plain head (not dueling, distributional "
                f"or noisy), activation in {ANALYTIC_ACTIVATIONS}, loss in {ANALYTIC_LOSSES} and flat "
                "parameters with gradients; use autograd otherwise"
            )
        self.stack = DenseStack.from_linears([*net.layers, net.advantage], net._act_name)
        self.huber = loss == "huber"

    @torch.no_grad()
    def __call__(self, obs: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Forward and backward pass; returns the loss (a scalar tensor), gradients in ``.grad``."""
        n = len(obs)
        h = self.stack.forward(obs if obs.dim() == 2 else obs.reshape(n, -1), save=True)
        index = actions.unsqueeze(1)
        q = h.gather(1, index).squeeze(1)
        if self.huber:
            loss = F.smooth_l1_loss(q, targets)
            dloss = (q - targets).clamp_(-1.0, 1.0).div_(n)
        else:
            loss = F.mse_loss(q, targets)
            dloss = (q - targets).mul_(2.0 / n)
        self.stack.backward(h.zero_().scatter_(1, index, dloss.unsqueeze(1)))  # the output buffer is free again
        return loss


class DenseStack:
    """Forward and backward of one MLP ``h_k = f(h_{k-1} W_k + b_k)`` (no ``f`` after the last layer), by hand.

    ``W_k`` is an (in, out) matrix: an ``nn.Linear`` weight seen transposed, or one member of a
    batched ensemble (:class:`classic_rl.agents.continuous.GroupedMLP`). The backward pass is the
    module docstring's recursion, with two things autograd cannot know:

    - only what is asked for is computed: :meth:`backward` skips the weight gradients when a loss
      only needs ``dL/dx`` (an actor's loss goes through the critic but does not train it), and
      computes ``dL/dx`` for the requested input columns only (the action part of ``[s, a]``);
    - the weight gradients are written straight into the given ``.grad`` views (overwritten, no
      zeroing), activations live in buffers reused across calls, each product takes its fast layout.

    ``forward(x, save=True)`` keeps the layer inputs for the next :meth:`backward`; ``save=False``
    (targets, no gradient) uses separate buffers, so it can run between the two. The returned
    output is a buffer: read it before the next forward of the same kind. Weights and inputs must
    not require gradients (the weights are held detached), so no autograd graph is recorded.
    """

    def __init__(
        self, weights: list[torch.Tensor], biases: list[torch.Tensor],
        weight_grads: list[torch.Tensor] | None = None, bias_grads: list[torch.Tensor] | None = None,
        act: str = "relu",
    ) -> None:
        if act not in ANALYTIC_ACTIVATIONS:
            raise ValueError(f"DenseStack activation must be one of {ANALYTIC_ACTIVATIONS}, got {act!r}")
        self.weights = [w.detach() for w in weights]
        self.weights_t = [w.t() for w in self.weights]  # (out, in) views for the backward products
        self.biases = [b.detach() for b in biases]
        self.weight_grads = weight_grads
        self.bias_grads = bias_grads
        self.relu = act == "relu"
        self._buffers: dict[tuple[str, int], list[torch.Tensor]] = {}
        self._inputs: list[torch.Tensor] = []

    @classmethod
    def from_linears(cls, layers: list[nn.Linear], act: str = "relu") -> DenseStack:
        """The stack of ``nn.Linear`` layers (gradients: their ``.grad`` tensors, when they have them)."""
        has_grads = all(layer.weight.grad is not None and layer.bias.grad is not None for layer in layers)
        return cls(
            [layer.weight.t() for layer in layers], [layer.bias for layer in layers],
            [layer.weight.grad.t() for layer in layers] if has_grads else None,
            [layer.bias.grad for layer in layers] if has_grads else None, act,
        )

    @classmethod
    def from_sequential(cls, net: nn.Sequential) -> DenseStack:
        """A ``classic_rl.nets.mlp``: Linear layers with ReLU (or Tanh) between them."""
        linears = [m for m in net if type(m) is nn.Linear]
        acts = {type(m) for m in net if type(m) is not nn.Linear}
        if len(linears) + sum(type(m) is not nn.Linear for m in net) != len(net) or not acts <= {nn.ReLU, nn.Tanh} \
                or len(acts) > 1 or type(net[-1]) is not nn.Linear:
            raise ValueError(f"DenseStack needs Linear layers with ReLU or Tanh between them, got {net}")
        return cls.from_linears(linears, "tanh" if acts == {nn.Tanh} else "relu")

    def _outputs(self, batch_size: int, kind: str) -> list[torch.Tensor]:
        """Per-layer (batch_size, out_k) buffers of one kind (saved, scratch, gradient), kept between calls."""
        key = (kind, batch_size)
        if key not in self._buffers:
            self._buffers = {k: v for k, v in self._buffers.items() if k[0] != kind}  # one batch size per kind
            self._buffers[key] = [torch.empty(batch_size, w.shape[1]) for w in self.weights]
        return self._buffers[key]

    def forward(self, x: torch.Tensor, save: bool = False) -> torch.Tensor:
        """The output (B, out) for inputs ``x`` (B, in); ``save`` keeps the layer inputs for :meth:`backward`."""
        outputs = self._outputs(len(x), "saved" if save else "scratch")
        inputs = []
        last = len(self.weights) - 1
        h = x
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            inputs.append(h)
            h = torch.addmm(b, h, w, out=outputs[k])
            if k < last:
                h.relu_() if self.relu else h.tanh_()
        if save:
            self._inputs = inputs
        return h

    def backward(self, delta: torch.Tensor, weight_grads: bool = True,
                 input_columns: slice | None = None) -> torch.Tensor | None:
        """Backpropagate ``delta = dL/d(output)`` through the last saved forward pass.

        Writes ``dL/dW_k``, ``dL/db_k`` into the gradient views when ``weight_grads``; returns
        ``dL/dx[:, input_columns]`` when ``input_columns`` is given, else None.
        """
        inputs = self._inputs
        if not inputs:
            raise RuntimeError("DenseStack.backward needs a forward(x, save=True) first")
        if weight_grads and self.weight_grads is None:
            raise ValueError("this DenseStack was built without gradient tensors (a frozen target network?)")
        grads = self._outputs(len(delta), "gradient")  # slot k - 1 holds dL/dh_{k-1}
        for k in range(len(self.weights) - 1, -1, -1):
            h_in = inputs[k]
            if weight_grads:
                _mm_into(h_in.t(), delta, self.weight_grads[k])
                torch.sum(delta, 0, out=self.bias_grads[k])
            if k > 0:
                # a one-column delta (a critic's value): its product is an outer product, a broadcast multiply
                op = torch.mul if delta.shape[1] == 1 else torch.mm
                delta = op(delta, self.weights_t[k], out=grads[k - 1])
                if self.relu:  # h = relu(z) >= 0: pass the gradient where h > 0 (autograd's own kernel)
                    torch.ops.aten.threshold_backward.grad_input(delta, h_in, 0.0, grad_input=delta)
                else:
                    delta.mul_(1.0 - h_in * h_in)
            elif input_columns is not None:
                return delta @ self.weights_t[0][:, input_columns]
        return None


def _mm_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """``out = a @ b`` in ``out``'s layout: a contiguous (m, n) tensor, or the transpose of one."""
    if out.is_contiguous():
        torch.mm(a, b, out=out)
    elif a.shape[0] < b.shape[1]:  # a narrow left factor (e.g. the observation): its product's fast layout
        out.copy_(torch.mm(a, b))
    else:
        torch.mm(b.t(), a.t(), out=out.t())
