"""`rlhf <command> [flags]`: dispatch to the command modules, imported only when called (they load torch,
transformers and TRL). Every command also runs as `accelerate launch [flags] -m rlhf <command> ...`.

Errors: a mistake in the input (`classic_rl.safe_io.UserError`, and the ValueError / FileNotFoundError
raised for bad values and missing files) prints one line `rlhf CMD: error: ...` and exits 2; a run that
diverges (`rlhf.common.errors.TrainingDiverged`) prints its message and exits 1. `--debug` (any command) or
RL_TOOLKIT_DEBUG=1 shows the full traceback instead.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from classic_rl.safe_io import UserError, debug_enabled
from rlhf.common.errors import TrainingDiverged, pop_debug_flag
from rlhf.methods.registry import METHODS

# command -> (module, one-line help). Each module has `main(argv: list[str] | None)`. The RL methods come
# from their registry (rlhf.methods.registry).
COMMANDS: dict[str, tuple[str, str]] = {
    "tiny-model": ("rlhf.steps.tiny_model", "build a small random-init causal LM and its tokenizer, offline"),
    "sft": ("rlhf.steps.sft", "supervised fine-tuning on demonstrations (TRL SFTTrainer)"),
    "reward": ("rlhf.steps.reward", "reward model from pairs or K-wise rankings"),
    **{m.name: (m.module, m.help) for m in METHODS.values()},
    "rollouts": ("rlhf.envs.rollouts", "play an env (--env) with a random or classic_rl policy; conversations for sft"),
    "pipeline": ("rlhf.steps.pipeline", "tiny-model, sft, reward and an RL method in a row from one YAML config"),
    "label": ("rlhf.steps.label", "rank sampled responses by hand in a local web page (rankings for `rlhf reward`)"),
}

USAGE = (
    "usage: rlhf <command> [--help] [--debug] [flags]\n\ncommands:\n"
    + "\n".join(f"  {name:<13} {text}" for name, (_, text) in COMMANDS.items())
    + "\n\n`rlhf <command> --help` lists a command's main flags, `--help-all` every flag."
)


def resolve(command: str) -> Callable[[list[str] | None], object]:
    """The `main` function of `command`; ValueError for an unknown or unavailable command."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command '{command}'; valid: {', '.join(COMMANDS)}")
    module_name = COMMANDS[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:  # a dependency of the module is missing: show the real error
            raise
        raise ValueError(f"`rlhf {command}` is not available in this installation: module {module_name} is missing") from err
    return module.main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    pop_debug_flag(rest)
    try:
        command_main = resolve(command)
    except ValueError as err:
        print(f"rlhf: error: {err}\n\n{USAGE}", file=sys.stderr)
        return 2
    from rlhf.common.utils import set_command

    set_command(command)
    try:
        command_main(rest)
    except (UserError, ValueError, FileNotFoundError) as err:  # bad input: a clear message, not a traceback
        if debug_enabled():
            raise
        print(f"rlhf {command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        if debug_enabled():
            raise
        print(f"rlhf {command}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    finally:
        set_command(None)
    return 0


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())

