"""Name -> agent class for every algorithm; agent modules register themselves on import."""

from __future__ import annotations

import difflib
import importlib
import pkgutil

from classic_rl.agents.base import REGISTRY, Agent

_loaded = False


def _load_agents() -> None:
    """Import every module of ``classic_rl.agents`` so their ``@register`` decorators run."""
    global _loaded
    if _loaded:
        return
    import classic_rl.agents as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"classic_rl.agents.{info.name}")
    _loaded = True


def algorithms() -> dict[str, type[Agent]]:
    _load_agents()
    return dict(sorted(REGISTRY.items()))


def get_algorithm(name: str) -> type[Agent]:
    algos = algorithms()
    if name not in algos:
        close = difflib.get_close_matches(name, list(algos), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown algorithm {name!r}.{hint} Valid names: {', '.join(algos)}")
    return algos[name]
