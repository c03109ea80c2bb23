"""The dataset formats each rlhf command reads, once: the data loader checks them (``rlhf.common.data``),
every command's ``--help`` and its errors describe them from here. Light: no torch or datasets import, so
``--help`` stays fast."""

from __future__ import annotations

from rlhf.methods.registry import RL_METHODS

__all__ = ["FORMAT_COLUMNS", "TASK_FORMATS", "accepted_formats_text", "formats_help", "task_of"]

FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "ranking": ("prompt", "responses"),
    "prompt": ("prompt",),
}
TASK_FORMATS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt_completion", "messages"),
    "reward": ("preference", "ranking"),
    "rl": ("prompt",),  # every RL method (ppo, grpo, rloo, reinforce_pp)
}

# One example row per format and what the command does with it, for --help and the README.
FORMAT_EXAMPLES: dict[str, tuple[str, str]] = {
    "prompt_completion": ('{"prompt": "Review the cafe:", "completion": " Great coffee."}',
                          "loss on the completion's tokens only"),
    "messages": ('{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}',
                 "rendered with the chat template; loss on the assistant turns where the template marks them"),
    "preference": ('{"prompt": "...", "chosen": "better response", "rejected": "worse response"}',
                   "one preference pair"),
    "ranking": ('{"prompt": "...", "responses": ["best", "second", "...", "worst"]}',
                "K >= 2 responses ordered best to worst (K(K-1)/2 pairs; what `rlhf label` writes)"),
    "prompt": ('{"prompt": "Review the cafe:"}', "one prompt per row; the policy writes the completions"),
}
COMMAND_TASKS = {"sft": "sft", "reward": "reward", **{name: "rl" for name in RL_METHODS}}  # every RL method reads prompts
SOURCES = ("a .jsonl (one JSON object per line), .json or .parquet file, a folder saved with "
           "datasets' save_to_disk, or a Hub dataset id. Text fields are strings or lists of "
           "{role, content} messages.")
LABEL_FORMATS = (
    "--dataset_name rows {prompt} (K responses are sampled), or {prompt, responses: [...]} or "
    "{prompt, chosen, rejected} (ranked as given); --output_file gets {prompt, responses: [best, ..., worst]}.",
)


def task_of(name: str) -> str:
    """The format family of a task or command name (an RL method's name means "rl")."""
    return COMMAND_TASKS.get(name, name)


def accepted_formats_text(task: str) -> str:
    """Human-readable list of the formats a command accepts, e.g. '{prompt, completion} or {messages}'."""
    return " or ".join("{" + ", ".join(FORMAT_COLUMNS[f]) + "}" for f in TASK_FORMATS[task_of(task)])


def formats_help(command: str) -> list[str]:
    """The lines of a command's ``--help`` that show the rows its dataset may hold (empty if none)."""
    import textwrap

    if command == "label":
        return ["data:", *(out for line in LABEL_FORMATS for out in textwrap.wrap(line, 98, initial_indent="  ",
                                                                                   subsequent_indent="  "))]
    task = COMMAND_TASKS.get(command)
    if task is None:
        return []
    lines = ["data (--dataset_name, --eval_dataset_name):", *textwrap.wrap(SOURCES, 98, initial_indent="  ",
                                                                          subsequent_indent="  "),
             "  one row per line, any of:"]
    for fmt in TASK_FORMATS[task]:
        example, meaning = FORMAT_EXAMPLES[fmt]
        lines += [f"    {example}", f"        {meaning}"]
    return lines
