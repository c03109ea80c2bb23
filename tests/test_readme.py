"""The README's quick start runs as printed, and its algorithm table matches `classic-rl list`.

Code blocks the README wants tested follow a marker line ``<!-- readme-test: NAME -->``; each is
run from an empty folder, as a newcomer pasting it into a shell (after ``source .venv/bin/activate``)
or a Python prompt would (``classic-rl`` commands through the console script's ``main``). The RLHF
blocks run the same way, in a folder laid out like the repository whose configs/rlhf/*.yaml have small
budgets (see ``SMALL_BUDGETS``), so they check that every printed command works and writes what the
README says, not how well the shipped budgets learn.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"<!-- readme-test: ([\w-]+) -->\s*\n```(\w+)\n(.*?)\n```", re.S)


def marked_blocks() -> dict[str, tuple[str, str]]:
    """NAME -> (language, code) for every block after a readme-test marker."""
    return {name: (lang, code) for name, lang, code in MARKER.findall(README.read_text())}


def shell_commands(code: str) -> list[str]:
    """The commands of a shell block: comments dropped, backslash continuations joined."""
    code = code.replace("\\\n", " ")
    commands = []
    for line in code.splitlines():
        line = line.split(" # ", 1)[0].strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{shlex.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_readme_marks_the_quick_start_blocks():
    blocks = marked_blocks()
    assert set(blocks) >= {"setup", "python-quickstart", "cli-quickstart"}
    assert blocks["python-quickstart"][0] == "python" and blocks["cli-quickstart"][0] == "bash"
    # The README starts with exactly the two set-up commands.
    assert shell_commands(blocks["setup"][1]) == ["make demo", "make test"]
    first_block = re.search(r"```\w*\n(.*?)\n```", README.read_text(), re.S).group(1)
    assert first_block == blocks["setup"][1]


def test_python_quick_start_runs(tmp_path):
    lang, code = marked_blocks()["python-quickstart"]
    result = run([sys.executable, "-c", code], tmp_path)
    # Each `print(...)  # VALUE, words` line promises VALUE in its output line.
    promised = [line.split("  # ")[1].split(",")[0] for line in code.splitlines()
                if line.startswith("print(") and "  # " in line]
    printed = result.stdout.splitlines()
    assert len(printed) == len(promised) >= 2
    for value, line in zip(promised, printed):
        assert line.endswith(value), (line, value)


def test_cli_quick_start_runs_and_writes_what_it_says(tmp_path, monkeypatch, capsys):
    # In this process (the console script calls the same main), so torch is imported once, not per command.
    from classic_rl.cli import main

    monkeypatch.chdir(tmp_path)
    _, code = marked_blocks()["cli-quickstart"]
    for command in shell_commands(code):
        argv = shlex.split(command)
        assert argv[0] == "classic-rl", f"the CLI quick start should hold classic-rl commands only: {command}"
        assert main(argv[1:]) == 0, command
    text = capsys.readouterr().out
    assert "q_learning" in text and "value iteration converged in" in text
    # What the paragraph after the block promises is in a run directory.
    for name in ("config.yaml", "episodes.csv", "summary.json", "model.safetensors"):
        assert (tmp_path / "runs" / "ql" / name).is_file(), name
    assert (tmp_path / "runs" / "ql" / "curves.png").is_file() and (tmp_path / "runs" / "vi" / "values.png").is_file()
    assert (tmp_path / "runs" / "ql" / "greedy.gif").is_file()


def readme_algorithm_rows() -> list[tuple[list[str], str]]:
    """(names in the `classic-rl train NAME` column, actions column) of the README's algorithm table."""
    text = README.read_text()
    table = text.split("## Algorithms", 1)[1].split("\n\n", 2)[1]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows.append((re.findall(r"`([a-z0-9_]+)`", cells[1]), cells[3]))
    return rows


def test_algorithm_table_matches_the_registry():
    from classic_rl.registry import algorithms

    registry = algorithms()
    kinds = {"discrete", "continuous", "multi-agent"}
    listed = set()
    for names, actions in readme_algorithm_rows():
        for name in names:
            if name not in registry:
                continue
            listed.add(name)
            said = {word for word in re.split(r"[\s,()/]+", actions) if word in kinds}
            assert said == set(registry[name].action_kinds), f"README says {name} acts on {actions!r}"
    assert listed == set(registry), f"missing from the README table: {sorted(set(registry) - listed)}"


@pytest.mark.parametrize("command", ["make demo", "make test"])
def test_make_targets_exist(command):
    result = subprocess.run(["make", "-n", *command.split()[1:]], cwd=README.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------ RLHF quick start
# The RLHF blocks run as printed (same flags, same order) in a copy of the repository's working layout whose
# configs/rlhf/*.yaml hold the shipped settings with small budgets, so every command finishes in seconds.
# The shipped budgets are checked by hand (docs: the table in "What `make demo` shows").
RLHF_BLOCKS = ("rlhf-pipeline", "rlhf-steps", "rlhf-grpo", "rlhf-zero3", "rlhf-rank", "rlhf-agents")
SMALL_BUDGETS = {
    "tiny.yaml": {
        "evaluation": {"num_prompts": 8},
        "sft": {"max_steps": 4, "save_steps": 2, "logging_steps": 2},
        "reward": {"max_steps": 4, "save_steps": 2, "logging_steps": 2, "per_device_train_batch_size": 4,
                   "calibration_num_samples": 8},
        "ppo": {"total_episodes": 16, "per_device_train_batch_size": 8, "num_mini_batches": 1, "num_ppo_epochs": 1,
                "response_length": 12, "num_eval_prompts": 8},
    },
    "grpo_tiny.yaml": {
        "evaluation": {"num_prompts": 8},
        "sft": {"max_steps": 4, "logging_steps": 2},
        "grpo": {"max_steps": 2, "per_device_train_batch_size": 16, "num_eval_prompts": 8},
    },
    "agent_tiny.yaml": {
        "evaluation": {"num_prompts": 4},
        "rollouts": {"episodes": 40},
        "sft": {"max_steps": 4, "logging_steps": 2},
        "grpo": {"max_steps": 2, "per_device_train_batch_size": 8, "num_generations": 4, "num_eval_prompts": 4},
        "ppo": {"total_episodes": 16, "per_device_train_batch_size": 8, "num_eval_prompts": 4},
    },
}
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def small_layout(root: Path) -> Path:
    """`root` laid out like the repository for the RLHF commands: configs/ with small-budget rlhf configs."""
    import yaml

    (root / "configs" / "rlhf").mkdir(parents=True)
    for name, budgets in SMALL_BUDGETS.items():
        config = yaml.safe_load((README.parent / "configs" / "rlhf" / name).read_text())
        for section, values in budgets.items():
            config[section].update(values)
        (root / "configs" / "rlhf" / name).write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copytree(README.parent / "configs" / "accelerate", root / "configs" / "accelerate")
    return root


@contextmanager
def working_directory(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_rlhf(command: str) -> None:
    """One `rlhf ...` line, through the console script's `main` in this process (torch is imported once)."""
    from rlhf.cli import main

    argv = shlex.split(command)
    assert argv[0] == "rlhf", f"not an rlhf command: {command}"
    assert main(argv[1:]) == 0, command


def inline_commands(prefix: str) -> list[str]:
    """Inline code spans of the README starting with `prefix` (line breaks inside a span read as spaces)."""
    spans = (" ".join(span.split()) for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", README.read_text()))
    return [span for span in spans if span.startswith(prefix)]


def summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def test_readme_marks_the_rlhf_blocks():
    blocks = marked_blocks()
    assert set(blocks) >= set(RLHF_BLOCKS)
    for name in RLHF_BLOCKS:
        lang, code = blocks[name]
        assert lang == "bash", name
        for command in shell_commands(code):
            assert command.split()[0] in ("rlhf", "accelerate", "pip", "python"), f"{name}: {command}"
    assert shell_commands(blocks["rlhf-pipeline"][1]) == ["rlhf pipeline --config configs/rlhf/tiny.yaml"]
    assert shell_commands(blocks["rlhf-grpo"][1]) == ["rlhf pipeline --config configs/rlhf/grpo_tiny.yaml"]
    # Every shipped config the README runs exists with the budgets the small copies replace.
    import yaml

    for name, budgets in SMALL_BUDGETS.items():
        config = yaml.safe_load((README.parent / "configs" / "rlhf" / name).read_text())
        assert set(budgets) <= set(config), name


@pytest.fixture(scope="module")
def rlhf_steps(tmp_path_factory) -> Path:
    """A small-budget layout in which the README's step-by-step RLHF block ran, command by command."""
    root = small_layout(tmp_path_factory.mktemp("readme-rlhf"))
    import rlhf.cli  # noqa: F401  (imported before leaving the repository)

    with working_directory(root):
        for command in shell_commands(marked_blocks()["rlhf-steps"][1]):
            run_rlhf(command)
    return root


def test_rlhf_step_by_step_writes_what_the_readme_says(rlhf_steps):
    runs = rlhf_steps / "runs"
    commands = shell_commands(marked_blocks()["rlhf-steps"][1])
    assert [shlex.split(c)[1] for c in commands] == ["tiny-model", "sft", "reward", "ppo", "ppo"]
    # Each output directory holds the model with its tokenizer, metrics.jsonl and summary.json.
    for name in ("sft", "rm", "ppo", "ppo-gold"):
        for file in (*MODEL_FILES, "metrics.jsonl", "summary.json"):
            assert (runs / name / file).is_file(), f"runs/{name}/{file}"
    for file in MODEL_FILES:
        assert (runs / "tiny" / file).is_file(), f"runs/tiny/{file}"
    for name in ("sft", "rm", "ppo", "ppo-gold"):
        assert summary(runs / name)["world_size"] == 1 and summary(runs / name)["train_runtime"] > 0
    sft = summary(runs / "sft")
    assert sft["eval_loss"] < sft["eval_loss_before"]  # even 4 steps learn something
    assert 0 <= summary(runs / "rm")["eval_accuracy"] <= 1
    for name, source in (("ppo", "runs/rm"), ("ppo-gold", "rlhf.tasks.reviews:gold_reward")):
        ppo = summary(runs / name)
        assert ppo["reward_source"] == source
        assert {"reward_mean_before", "reward_mean_after", "kl_mean"} <= set(ppo)
    metrics = [json.loads(line) for line in (runs / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert {"objective/kl", "objective/scores", "policy/approxkl_avg", "loss/value_avg"} <= set(metrics[-1])
    # Security notes: trust_remote_code is off in every command's resolved settings.
    for name in ("sft", "rm", "ppo", "ppo-gold"):
        assert "trust_remote_code: false" in (runs / name / "config.yaml").read_text(), name


def test_rlhf_reward_fn_from_a_file_and_the_output_dir_rules(rlhf_steps, capsys):
    from rlhf.cli import main

    # `--reward_fn file.py:function` (security notes) in the printed gold-reward command.
    gold_command = shell_commands(marked_blocks()["rlhf-steps"][1])[-1]
    assert "--reward_fn rlhf.tasks.reviews:gold_reward --output_dir runs/ppo-gold" in gold_command
    (rlhf_steps / "short_answers.py").write_text(
        "def brevity(prompts, completions):\n    return [-len(c.split()) / 10 for c in completions]\n")
    with working_directory(rlhf_steps):
        run_rlhf(gold_command.replace("rlhf.tasks.reviews:gold_reward", "short_answers.py:brevity")
                 .replace("runs/ppo-gold", "runs/ppo-file"))
        assert summary(Path("runs/ppo-file"))["reward_source"] == "short_answers.py:brevity"
        # An existing non-empty --output_dir is refused (one line, exit 2) unless --overwrite_output_dir.
        sft_command = shell_commands(marked_blocks()["rlhf-steps"][1])[1]
        capsys.readouterr()
        assert main(shlex.split(sft_command)[1:]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("rlhf sft: error:") and "--overwrite_output_dir" in error and "\n" not in error
    assert any("--overwrite_output_dir" in span for span in inline_commands("--overwrite_output_dir"))


def test_rlhf_single_command_resumes_from_its_latest_checkpoint(rlhf_steps, tmp_path, capsys):
    assert "--resume_from_checkpoint true" in inline_commands("--resume_from_checkpoint")
    root = tmp_path / "layout"
    shutil.copytree(rlhf_steps, root, ignore=shutil.ignore_patterns("ppo*", "rm"))
    # Killed after its checkpoint at step 2 (of 4): later checkpoints and the finished model are gone.
    sft = root / "runs" / "sft"
    shutil.rmtree(sft / "checkpoint-4")
    (sft / "summary.json").unlink()
    sft_command = shell_commands(marked_blocks()["rlhf-steps"][1])[1]
    with working_directory(root):
        run_rlhf(sft_command + " --resume_from_checkpoint true")
    resumed, uninterrupted = summary(sft), summary(rlhf_steps / "runs" / "sft")
    assert resumed["global_step"] == 4
    assert resumed["eval_loss"] == pytest.approx(uninterrupted["eval_loss"], rel=1e-5)


@pytest.mark.parametrize("block", ["rlhf-pipeline", "rlhf-grpo"])
def test_rlhf_pipelines_run_and_report(block, tmp_path):
    import rlhf.cli  # noqa: F401

    (command,) = shell_commands(marked_blocks()[block][1])
    root = small_layout(tmp_path)
    with working_directory(root):
        run_rlhf(command)
    rl_step = {"rlhf-pipeline": "ppo", "rlhf-grpo": "grpo"}[block]
    out = root / {"rlhf-pipeline": "runs/rlhf-tiny", "rlhf-grpo": "runs/rlhf-grpo-tiny"}[block]
    for step in ("tiny_model", "sft", rl_step):
        assert (out / step / "config.json").is_file(), step
    result = summary(out)
    assert result["steps"][-1] == rl_step and set(result["evaluation"]) == {"sft", rl_step}
    assert all("gold" in row for row in result["evaluation"].values())
    table = (out / "results.md").read_text()
    assert "SFT eval loss (before -> after SFT)" in table and "gold score" in table
    if block == "rlhf-pipeline":
        assert (out / "ppo_curves.png").is_file() and (out / "reward" / "summary.json").is_file()
        # The README's table (What `make demo` shows) has the rows of results.md, in order.
        assert metric_names(README.read_text()) == metric_names(table)


@pytest.mark.slow
def test_rlhf_agents_block_runs_as_printed(tmp_path):
    """The LM-agent pipeline and the side-by-side table script, as printed, with small budgets."""
    import rlhf.cli  # noqa: F401

    pipeline, table_script = shell_commands(marked_blocks()["rlhf-agents"][1])
    assert pipeline == "rlhf pipeline --config configs/rlhf/agent_tiny.yaml"
    assert table_script == "python scripts/agent_table.py"
    root = small_layout(tmp_path)
    with working_directory(root):
        run_rlhf(pipeline)
    out = root / "runs" / "rlhf-agent-tiny"
    result = summary(out)
    assert result["steps"] == ["rollouts", "tiny_model", "sft", "grpo"]
    for policy in ("sft", "grpo"):
        assert set(result["evaluation"][policy]) >= {"return_mean", "success_rate", "episodes"}
    # the held-out episodes are kept as conversations, each seed played by both policies
    first = result["samples"][0]
    assert [a["policy"] for a in first["answers"]] == ["sft", "grpo"]
    assert first["answers"][0]["messages"][0]["role"] in ("system", "user")
    assert any(m["role"] == "assistant" for m in first["answers"][1]["messages"])

    (root / "scripts").mkdir()
    shutil.copy(README.parent / "scripts" / "agent_table.py", root / "scripts")  # reads root/configs
    env = {**os.environ, "PYTHONPATH": str(README.parent), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, *shlex.split(table_script)[1:]]  # `python` is this interpreter
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (root / "runs" / "agent_table" / "table.md").read_text()
    assert table.count("\n| ") == 5 and "tabular Q-learning" in table and "SFT + PPO" in table
    episodes = json.loads((root / "runs" / "agent_table" / "episodes.json").read_text())
    assert sorted(a["policy"] for a in episodes[0]["answers"]) == ["grpo", "ppo", "sft"]
    assert len({a["env_seed"] for a in episodes}) == len(episodes)  # each a different held-out seed


def metric_names(text: str) -> list[str]:
    """First column of the Markdown table headed `| metric | value |` in `text`."""
    rows = text.split("| metric", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    return [row.strip("|").split(" | ")[0].strip().replace("\\|", "|") for row in rows if row.startswith("|")]


def test_rlhf_pipeline_resume_skips_finished_steps_and_resumes_the_interrupted_one(tmp_path, capsys):
    (resume_command,) = inline_commands("rlhf pipeline --config configs/rlhf/tiny.yaml --resume")
    (command,) = shell_commands(marked_blocks()["rlhf-pipeline"][1])
    root = small_layout(tmp_path)
    out = root / "runs" / "rlhf-tiny"
    with working_directory(root):
        run_rlhf(command)
        finished = summary(out)
        # Killed in the reward step after its checkpoint at step 2: no later checkpoint, no summary, no ppo.
        shutil.rmtree(out / "reward" / "checkpoint-4")
        (out / "reward" / "summary.json").unlink()
        shutil.rmtree(out / "ppo")
        for name in ("summary.json", "results.md", "ppo_curves.png"):
            (out / name).unlink()
        capsys.readouterr()
        run_rlhf(resume_command)
    printed = capsys.readouterr().out
    assert "tiny_model already done" in printed and "sft already done" in printed
    resumed = summary(out)
    assert resumed["summaries"]["reward"]["global_step"] == 4
    for policy, row in finished["evaluation"].items():  # the uninterrupted run's numbers
        assert resumed["evaluation"][policy] == pytest.approx(row), policy


@pytest.mark.slow  # two processes importing torch and DeepSpeed: about 30 s (the first run builds a DeepSpeed op)
def test_rlhf_zero3_launch_runs_as_printed(rlhf_steps):
    (command,) = shell_commands(marked_blocks()["rlhf-zero3"][1])
    argv = shlex.split(command)
    assert argv[:3] == ["accelerate", "launch", "--config_file"]
    # `accelerate` from the environment running the tests (on PATH after `source .venv/bin/activate`).
    launcher = Path(sys.executable).with_name("accelerate")
    run([str(launcher), *argv[1:]], rlhf_steps)
    out = rlhf_steps / "runs" / "ppo-zero3"
    for file in (*MODEL_FILES, "metrics.jsonl", "summary.json"):
        assert (out / file).is_file(), file
    result = summary(out)
    assert (result["distributed_type"], result["zero_stage"], result["world_size"]) == ("DEEPSPEED", 3, 2)


def test_rlhf_rank_your_own_data_runs_as_printed(rlhf_steps, tmp_path, monkeypatch):
    """`rlhf label` as printed, ranked through its JSON API, then the printed reward and ppo commands."""
    import httpx  # installed with gradio (the `label` extra, also in `dev`)

    from rlhf import label
    from rlhf.cli import main

    install, label_command, reward_command, ppo_command = shell_commands(marked_blocks()["rlhf-rank"][1])
    assert install == 'pip install -e ".[label]"'
    assert re.search(r"^label = ", (README.parent / "pyproject.toml").read_text(), re.M), "no `label` extra"
    # The working layout: runs/sft from the step-by-step block, the first 12 shipped prompts, the held-out
    # files and the (small-budget) configs the reward and ppo commands read their settings from.
    small_layout(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "sft").symlink_to(rlhf_steps / "runs" / "sft")
    (tmp_path / "rlhf" / "data").mkdir(parents=True)
    shipped = (README.parent / "rlhf" / "data" / "prompts.jsonl").read_text().splitlines()
    (tmp_path / "rlhf" / "data" / "prompts.jsonl").write_text("\n".join(shipped[:12]) + "\n")
    for name in ("pairs_eval.jsonl", "prompts_eval.jsonl"):
        shutil.copy(README.parent / "rlhf" / "data" / name, tmp_path / "rlhf" / "data" / name)
    assert "--config configs/rlhf/tiny.yaml" in reward_command and "--config configs/rlhf/tiny.yaml" in ppo_command
    servers = []
    real_serve = label.serve

    def serve_on_a_free_port(app, host, port):
        assert (host, port) == ("127.0.0.1", 7860)  # the page the README says to open, on 127.0.0.1 only
        servers.append(real_serve(app, host, 0))  # any free port: tests run side by side
        return servers[-1]

    monkeypatch.setattr(label, "serve", serve_on_a_free_port)
    monkeypatch.chdir(tmp_path)
    exit_codes = []
    thread = threading.Thread(target=lambda: exit_codes.append(main(shlex.split(label_command)[1:])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 180
    while not (servers and servers[0].started):
        assert thread.is_alive() and time.monotonic() < deadline, "rlhf label did not start its server"
        time.sleep(0.1)
    port = servers[0].servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            while not (item := client.get("/api/next").json()).get("done"):
                assert len(item["responses"]) == 4  # --num_responses 4
                order = sorted(range(4), key=lambda i: len(item["responses"][i]))  # a taste: shortest first
                assert client.post("/api/rank", json={"id": item["id"], "order": order}).status_code == 200
    finally:
        servers[0].should_exit = True
        thread.join(60)
    assert exit_codes == [0]
    rankings = [json.loads(line) for line in Path("my_rankings.jsonl").read_text().splitlines()]
    assert len(rankings) == 12
    assert all(len(r["responses"]) == 4 and r["responses"] == sorted(r["responses"], key=len) for r in rankings)
    run_rlhf(reward_command)
    assert 0 <= summary(Path("runs/my_rm"))["eval_accuracy"] <= 1
    run_rlhf(ppo_command)
    ppo = summary(Path("runs/my_ppo"))
    assert ppo["reward_source"] == "runs/my_rm" and {"reward_mean_before", "reward_mean_after"} <= set(ppo)
