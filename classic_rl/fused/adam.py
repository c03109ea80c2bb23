"""Adam for one flat parameter tensor, with the per-step Python overhead taken out.

With the parameters of a network in one tensor (:func:`classic_rl.nets.flat_parameters`), the
fused Adam kernel updates them in a single op; yet ``torch.optim.Adam.step`` spends longer in
Python bookkeeping (profiling hooks, grouping tensors by device and dtype, per-group checks) than
in that kernel (docs/benchmarks.md). For an agent that takes one gradient step per environment step on a
CPU (DQN on Acrobot does) that bookkeeping is a visible share of the run. :class:`FlatAdam` is
``torch.optim.Adam(fused=True)`` whose ``step`` goes straight to the same kernel:

    m <- beta1 m + (1 - beta1) g,   v <- beta2 v + (1 - beta2) g^2,
    theta <- theta - lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

Same state, same ``state_dict``, same numbers bit for bit (tested); anything outside the
single-tensor case (a closure, several parameters, amsgrad, weight decay, no state yet) falls
back to ``torch.optim.Adam.step``. Optimizer step hooks are not called on the short path.
"""

from __future__ import annotations

import torch


class FlatAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` over one tensor, stepping the fused kernel directly."""

    def __init__(self, param: torch.nn.Parameter, lr: float, eps: float = 1e-8,
                 betas: tuple[float, float] = (0.9, 0.999)) -> None:
        super().__init__([param], lr=lr, eps=eps, betas=betas, fused=True)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        group = self.param_groups[0]
        params = group["params"]
        state = self.state[params[0]] if len(params) == 1 else None
        if (closure is not None or len(self.param_groups) != 1 or not state or params[0].grad is None
                or group["amsgrad"] or group["weight_decay"] or group["maximize"]):
            return super().step(closure)  # first step (creates the state) and every unusual case
        param = params[0]
        step = state["step"]
        step += 1  # in place, as Adam's torch._foreach_add_(state_steps, 1)
        beta1, beta2 = group["betas"]
        torch._fused_adam_(
            [param], [param.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [step],
            amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0, eps=group["eps"],
            maximize=False, grad_scale=None, found_inf=None,
        )
        return None


def make_adam(param: torch.nn.Parameter, lr: float, eps: float = 1e-8, backend: str = "fused") -> torch.optim.Adam:
    """Adam over one flat parameter: :class:`FlatAdam` for the ``fused`` backend, ``torch.optim.Adam``
    (the same fused kernel through its usual bookkeeping, bit-identical numbers and state) for ``autograd``."""
    if backend == "fused":
        return FlatAdam(param, lr=lr, eps=eps)
    return torch.optim.Adam([param], lr=lr, eps=eps, fused=True)
