"""Module paths of earlier versions, kept working: ``import rlhf.ppo`` is ``rlhf.methods.ppo`` (the same
module object, so a patch through either name is seen by both), and ``python -m rlhf.ppo`` runs it.

The modules moved into folders by job (``rl/``, ``methods/``, ``steps/``, ``common/``, ``tasks/``);
this table maps each old name to its new home. A meta-path finder answers for these names only.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old name under rlhf. -> new name under rlhf.
MOVED = {
    "errors": "common.errors",
    "utils": "common.utils",
    "data": "common.data",
    "models": "common.models",
    "checkpoints": "common.checkpoints",
    "distributed": "common.distributed",
    "rl_config": "rl.config",
    "experience": "rl.experience",
    "rollout": "rl.sampler",
    "ppo_models": "rl.trainable",
    "rl_trainer": "rl.trainer",
    "training_state": "rl.training_state",
    "ppo": "methods.ppo",
    "ppo_config": "methods.ppo_config",
    "grpo": "methods.grpo",
    "grpo_config": "methods.grpo_config",
    "rloo": "methods.rloo",
    "rloo_config": "methods.rloo_config",
    "group_rl": "methods.group",
    "tiny_model": "steps.tiny_model",
    "sft": "steps.sft",
    "reward": "steps.reward",
    "label": "steps.label",
    "pipeline": "steps.pipeline",
    "evaluate": "steps.evaluate",
    "runs": "steps.runs",
    "task": "tasks.reviews",
    "verifiable": "tasks.verifiable",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)  # the real module, registered under the old name too

    def exec_module(self, module) -> None:
        pass  # already executed under its new name

    def get_code(self, fullname: str):
        # `python -m rlhf.ppo` (runpy) runs the new module's code as __main__.
        spec = importlib.util.find_spec(self.target)
        return spec.loader.get_code(self.target)


class _MovedModules(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None):
        new = MOVED.get(fullname.removeprefix("rlhf.")) if fullname.startswith("rlhf.") else None
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(f"rlhf.{new}"))


def install() -> None:
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())
