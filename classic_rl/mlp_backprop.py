"""Backpropagation written out for the plain MLP Q-network: DQN's update without autograd.

DQN's regression ``loss = mean_i l(Q(s_i, a_i) - y_i)`` (``l`` Huber or squared error) on an
MLP ``h_0 = s``, ``h_k = f(W_k h_{k-1} + b_k)``, ``Q = W_L h_{L-1} + b_L`` has the textbook
gradient, computed here layer by layer from the output back::

    delta_L[i, a] = l'(Q(s_i, a_i) - y_i) / B   if a = a_i, else 0     (only the taken action)
    dW_k = delta_k^T h_{k-1},   db_k = sum_i delta_k[i]
    delta_{k-1} = (delta_k W_k) * f'(h_{k-1})       f' = 1[h > 0] for relu, 1 - h^2 for tanh
    l'(d) = clip(d, -1, 1) (Huber, beta 1) or 2 d (squared error)

Why by hand: on a CPU with a 256x256 network and one update per environment step (DQN on
Acrobot), autograd's graph building and bookkeeping, fresh allocations for every activation and
one badly shaped weight-gradient product cost as much as the matrix products themselves. Here
the activations live in buffers reused across updates, the gradients are written straight into
the network's (flat) ``.grad`` tensors, and each product takes its fastest layout. The result
equals autograd's up to float rounding (tested); anything this does not cover (CNN bodies,
dueling or distributional heads, noisy layers, importance weights) uses autograd.
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
        layers = [*net.layers, net.advantage]
        self.weights = [layer.weight.detach() for layer in layers]
        self.biases = [layer.bias.detach() for layer in layers]
        self.weight_grads = [layer.weight.grad for layer in layers]
        self.bias_grads = [layer.bias.grad for layer in layers]
        self.relu = net._act_name == "relu"
        self.huber = loss == "huber"
        self._buffers: tuple[int, list[torch.Tensor]] = (-1, [])

    def _outputs(self, batch_size: int) -> list[torch.Tensor]:
        """Per-layer output buffers for this batch size (kept between calls)."""
        if self._buffers[0] != batch_size:
            self._buffers = (batch_size, [torch.empty(batch_size, w.shape[0]) for w in self.weights])
        return self._buffers[1]

    @torch.no_grad()
    def __call__(self, obs: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Forward and backward pass; returns the loss (a scalar tensor), gradients in ``.grad``."""
        n = len(obs)
        outputs = self._outputs(n)
        last = len(self.weights) - 1
        h = obs if obs.dim() == 2 else obs.reshape(n, -1)
        inputs = []  # h_{k-1} of each layer
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            inputs.append(h)
            h = torch.addmm(b, h, w.t(), out=outputs[k])
            if k < last:
                h.relu_() if self.relu else h.tanh_()
        index = actions.unsqueeze(1)
        q = h.gather(1, index).squeeze(1)
        if self.huber:
            loss = F.smooth_l1_loss(q, targets)
            dloss = (q - targets).clamp_(-1.0, 1.0).div_(n)
        else:
            loss = F.mse_loss(q, targets)
            dloss = (q - targets).mul_(2.0 / n)
        delta = h.zero_().scatter_(1, index, dloss.unsqueeze(1))  # the output buffer is free again
        for k in range(last, -1, -1):
            h_in = inputs[k]
            if h_in.shape[1] < delta.shape[1]:  # a narrow input (the observation): the product's fast layout
                self.weight_grads[k].copy_(torch.mm(h_in.t(), delta).t())
            else:
                torch.mm(delta.t(), h_in, out=self.weight_grads[k])
            torch.sum(delta, 0, out=self.bias_grads[k])
            if k > 0:
                delta = delta @ self.weights[k]
                if self.relu:  # h = relu(.) >= 0, so 1[h > 0] = sign(h) (a fast float op; bool masks are slow)
                    delta.mul_(h_in.sign())
                else:
                    delta.mul_(1.0 - h_in * h_in)
        return loss
