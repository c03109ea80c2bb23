"""`rlhf <command> [flags]`: dispatch to the command modules, imported only when called (they load torch,
transformers and TRL); `--help` / `--help-all` come from the stored help texts (``rlhf.common.help``), so
they load none of them. Every command also runs as `accelerate launch [flags] -m rlhf <command> ...`.

Errors: a mistake in the input (`classic_rl.safe_io.UserError`, and the ValueError / FileNotFoundError
raised for bad values and missing files) prints one line `rlhf CMD: error: ...` and exits 2; a run that
diverges (`TrainingDiverged`) prints its message and exits 3; a full disk exits 1; Ctrl-C / SIGTERM 130 / 143
(`classic_rl.safe_io.exit_status`, the mapping `classic-rl` uses too). `--debug` (any command) or
RL_TOOLKIT_DEBUG=1 shows the full traceback instead.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from collections.abc import Callable

from classic_rl.safe_io import UserError, debug_enabled, exit_status, one_line
from rlhf.common.errors import DiskFull, EngineError, TrainingDiverged, pop_debug_flag
from rlhf.common.help import cached as cached_help
from rlhf.common.help import help_kind
from rlhf.common.process_exit import end_processes
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
    "vllm-serve": ("rlhf.steps.vllm_serve", "a vLLM engine for --use_vllm --vllm_mode server (as `trl vllm-serve`)"),
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
    kind = help_kind(rest)
    if kind is not None and command in COMMANDS:
        text = cached_help(command, kind)  # None when it may be stale: then the command prints it live
        if text is not None:
            sys.stdout.write(text)
            return 0
    try:
        command_main = resolve(command)
    except ValueError as err:
        print(f"rlhf: error: {err}\n\n{USAGE}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # while importing the command's libraries
        print(f"rlhf {command}: interrupted", file=sys.stderr)
        return 130
    from rlhf.common.utils import set_command

    set_command(command)
    finished = False
    try:
        from rlhf.common.distributed import keep_deepspeed_unloaded

        keep_deepspeed_unloaded()  # its import is slow and noisy; loaded only under a DeepSpeed launch
        threads = _set_threads(command, rest)
        command_main(rest)
        finished = True
        if threads:  # at the end, so that an error in the input is still one line
            print(threads, file=sys.stderr)
    except (UserError, ValueError, FileNotFoundError, TrainingDiverged, DiskFull, EngineError) as err:  # one line, no traceback
        if debug_enabled():
            raise
        print(f"rlhf {command}: error: {one_line(err)}", file=sys.stderr)
        return exit_status(err)  # the mapping both command lines share: 2 bad input, 3 diverged, 1 full disk
    except OSError as err:  # a full disk while writing a file no checkpoint writer wraps (a metrics line)
        if debug_enabled() or err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"rlhf {command}: error: no space left on device writing {err.filename or 'a file'}; free some space "
              "and continue with the same command and --resume_from_checkpoint true", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C / SIGTERM: one line, the shell's exit status (130, 143)
        if debug_enabled():
            raise
        if not hasattr(err, "where") or os.environ.get("RANK", "0") == "0":  # every rank stops there: said once
            print(f"rlhf {command}: {_stopped_line(command, err)}", file=sys.stderr)
        return exit_status(err)
    finally:
        set_command(None)
        end_processes(finished)  # under a launcher: every rank ends in order (rlhf.common.process_exit)
    return 0


def _set_threads(command: str, rest: list[str]) -> str | None:
    """Take `--num_threads N` out of `rest` and set torch's threads per process (classic_rl.threads)
    before the command builds anything; returns the line to print (None on other ranks and for `--help`)."""
    from classic_rl.threads import configure_threads, local_processes, pop_num_threads_flag

    line = configure_threads(pop_num_threads_flag(rest), local_processes())
    if os.environ.get("RANK", "0") != "0" or {"-h", "--help", "--help-all"} & set(rest):
        return None
    return f"rlhf {command}: {line}"


def _stopped_line(command: str, err: KeyboardInterrupt) -> str:
    """What a stop says: a stop at a safe point (``rlhf.common.stopping.RunStopped``) where it saved and how
    to go on; a stop at once (a second Ctrl-C, or outside a training loop) what is kept."""
    if hasattr(err, "where"):
        return one_line(err)
    if command == "pipeline":
        return "interrupted; finished steps and saved checkpoints are kept: continue with the same command and --resume"
    if command in ("sft", "reward", *METHODS):
        return ("interrupted at once; checkpoints saved so far are kept: continue with the same command and "
                "--resume_from_checkpoint true (or start again without it if there is none)")
    return "interrupted"



