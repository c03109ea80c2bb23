"""The fused update backend: hand-written gradients and a bare fused-Adam step, behind one switch.

Every update in :mod:`classic_rl.agents` is defined once, with autograd, in the agent's own
module; that is the code to read and to change. This package holds the optional fast path:

- :mod:`classic_rl.fused.adam`: :class:`~classic_rl.fused.adam.FlatAdam`, ``torch.optim.Adam(fused=True)``
  on one flat parameter tensor whose ``step`` calls the fused kernel directly (bit-identical);
- :mod:`classic_rl.fused.backprop`: backpropagation written out for plain MLPs
  (:class:`~classic_rl.fused.backprop.DenseStack`) and DQN's regression loss on it;
- :mod:`classic_rl.fused.critics`: the critics' and actors' gradients of DDPG, TD3 and SAC;
- :mod:`classic_rl.fused.updates`: the whole fused updates of DQN, DDPG/TD3 and SAC, each a
  drop-in for the agent's autograd update (same inputs, same statistics, same state).

The switch is the config field ``update_backend`` (``fused`` or ``autograd``), resolved once when
the agent is built (:func:`select_update`); update bodies never test it. ``fused`` takes the
hand-written gradient where one exists (plain-MLP DQN heads with uniform replay; DDPG, TD3, SAC)
and FlatAdam everywhere; ``autograd`` runs the autograd definition with ``torch.optim.Adam``.
Both give the same numbers up to float rounding (``tests/test_fused_dqn_update.py``,
``tests/test_fused_continuous_update.py``); the default is chosen from the measurement in
``docs/benchmarks.md`` ("Update backends: fused or autograd").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

UPDATE_BACKENDS = ("fused", "autograd")
DEFAULT_UPDATE_BACKEND = "fused"


def resolve_update_backend(config: Any) -> str:
    """Check ``config.update_backend`` and fold in the deprecated ``analytic_grad`` (true = fused,
    false = autograd); the resolved name is written back, so ``config.yaml`` records it."""
    legacy = getattr(config, "analytic_grad", None)
    if legacy is not None:
        config.update_backend = "fused" if legacy else "autograd"
        config.analytic_grad = None
    backend = str(config.update_backend).strip().lower()
    if backend not in UPDATE_BACKENDS:
        raise ValueError(f"update_backend must be one of {', '.join(UPDATE_BACKENDS)}; got {config.update_backend!r}")
    config.update_backend = backend
    return backend


def select_update(backend: str, autograd: Callable, fused: Callable[[], Callable] | None) -> Callable:
    """The update to run: ``autograd`` (the definition), or the object ``fused()`` builds when the
    backend is ``fused`` and a fused update applies (``fused`` is None where none does)."""
    if backend == "fused" and fused is not None:
        return fused()
    return autograd
