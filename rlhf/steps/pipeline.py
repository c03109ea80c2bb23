"""`rlhf pipeline --config FILE.yaml`: tiny-model (optional), sft, reward and ppo in a row, then a results table.

    rlhf pipeline --config configs/rlhf/tiny.yaml [--output_dir DIR] [--seed N] [--steps sft reward ...]
                  [--resume | --overwrite_output_dir]

The YAML file has top-level `output_dir`, `seed`, `steps` (a subset of rollouts, tiny_model, sft, reward and
an RL method, in that order), an `evaluation` section, and one section per step holding that command's flags.
An LM agent's pipeline (configs/rlhf/agent_tiny.yaml) also has a top-level `env` (with `env_kwargs`,
`max_turns`) that rollouts, the RL step and the evaluation play: rollouts writes the SFT conversations,
the RL step trains on episodes (no reward model), and the evaluation compares the SFT and RL policies'
mean return and success rate on held-out env seeds (`evaluation.num_prompts` episodes). Each step
writes to OUTPUT_DIR/<step>/ and the next step starts from it: sft from the tiny model (unless
`sft.model_name_or_path` is set), reward from the SFT model, ppo from the SFT policy with the reward
model (unless `ppo.reward_fn` is set). The resolved flags of each step are kept in OUTPUT_DIR/configs/.

At the end, on held-out prompts, the SFT policy and the PPO policy are sampled (as in PPO training) and
scored by the gold scorer and by the learned reward model. OUTPUT_DIR gets `results.md` (the table),
`summary.json` and `<rl step>_curves.png` (reward and KL over the RL step's updates, from its metrics.jsonl).

OUTPUT_DIR must be new or empty, unless `--overwrite_output_dir` (each step then replaces only its own
files) or `--resume`: a killed pipeline run again with `--resume` skips the steps that finished (their
OUTPUT_DIR/<step>/summary.json exists), resumes the interrupted step from its latest checkpoint
(OUTPUT_DIR/<step>/checkpoint-<step>, kept when a section sets `save_steps`) or restarts it if it has
none, and runs the rest.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from classic_rl.safe_io import UserError, atomic_write_text
from rlhf.common.checkpoints import latest_checkpoint, locked_output_dir
from rlhf.common.errors import ConfigError
from rlhf.common.utils import (
    barrier,
    is_main_process,
    load_yaml,
    read_jsonl,
    set_command,
    write_json,
    yaml_key_lines,
)
from rlhf.methods.registry import METHODS, RL_METHODS

RL_STEPS = RL_METHODS  # the RL step: any registered method (usually one) after sft / reward
# rollouts: demonstrations played in the pipeline's `env` (rlhf.envs.rollouts), the SFT data of an LM agent
STEPS = ("rollouts", "tiny_model", "sft", "reward", *RL_STEPS)
STEP_MODULES = {"rollouts": "rlhf.envs.rollouts", "tiny_model": "rlhf.steps.tiny_model", "sft": "rlhf.steps.sft",
                "reward": "rlhf.steps.reward", **{name: m.module for name, m in METHODS.items()}}
ENV_STEPS = ("rollouts", *RL_STEPS)  # the steps that play the pipeline's env


@dataclass
class EvaluationConfig:
    """How the SFT and PPO policies are compared at the end."""

    prompts: str = "rlhf/data/prompts_eval.jsonl"  # held-out {prompt} rows
    reward_fn: str | None = "rlhf.tasks.reviews:gold_reward"  # the gold scorer (None: skip gold scores)
    num_prompts: int = 80
    max_new_tokens: int | None = None  # default: ppo.response_length, else 32
    temperature: float | None = None  # default: ppo.temperature, else 1.0


@dataclass
class PipelineConfig:
    output_dir: str = "runs/rlhf-tiny"
    seed: int = 0
    steps: list[str] = field(default_factory=lambda: [s for s in STEPS if s != "rollouts"])
    env: str | None = None  # an LM agent's env (rlhf.envs): rollouts and the RL step play it, the evaluation too
    env_kwargs: dict[str, Any] | str | None = None
    max_turns: int | None = None  # the episodes' turn limit in every step (None: each command's default)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)  # step -> its command's flags

    def __getattr__(self, name: str) -> dict[str, Any]:
        """``cfg.sft``, ``cfg.ppo``, ...: a step's section (empty if the YAML has none)."""
        if name in STEPS:
            return self.__dict__.setdefault("sections", {}).setdefault(name, {})
        raise AttributeError(name)

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineConfig:
        data = load_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"pipeline config '{path}' must be a YAML mapping")
        valid = (set(cls.__dataclass_fields__) - {"sections"}) | set(STEPS)
        unknown = sorted(set(data) - valid)
        if unknown:
            line = yaml_key_lines(path).get((unknown[0],))
            where = f"{path}:{line}" if line else f"pipeline config '{path}'"
            raise ConfigError(f"{where}: unknown keys {unknown}; valid: {sorted(valid)}")
        for name in ("evaluation", *STEPS):
            if data.get(name) is not None and not isinstance(data[name], dict):
                line = yaml_key_lines(path).get((name,))
                raise ConfigError(f"{path}:{line}: section '{name}' must be a mapping of flags")
        evaluation_keys = set(EvaluationConfig.__dataclass_fields__)
        bad = sorted(set(data.get("evaluation") or {}) - evaluation_keys)
        if bad:
            line = yaml_key_lines(path).get(("evaluation", bad[0]))
            raise ConfigError(f"{path}:{line}: unknown evaluation key '{bad[0]}'; valid: {sorted(evaluation_keys)}")
        evaluation = EvaluationConfig(**(data.pop("evaluation", None) or {}))
        sections = {s: dict(data.pop(s, None) or {}) for s in STEPS}
        return cls(evaluation=evaluation, sections=sections, **data)

    def validate(self) -> PipelineConfig:
        bad = [s for s in self.steps if s not in STEPS]
        if bad:
            raise ConfigError(f"steps {bad} are not valid; choose from {list(STEPS)} (run in that order)")
        self.steps = [s for s in STEPS if s in self.steps]
        if "sft" in self.steps and "model_name_or_path" not in self.sft and not self.produces("tiny_model"):
            raise ValueError("without the tiny_model step, set sft.model_name_or_path (a hub id or local directory)")
        if "rollouts" in self.steps and not (self.env or self.rollouts.get("env")):
            raise ValueError("the rollouts step plays an env: set the top-level `env` (and `env_kwargs`)")
        return self

    def produces(self, step: str) -> bool:
        """True if `step`'s output is available to later steps: it runs now, or ran before in output_dir."""
        marker = "summary.json" if step == "rollouts" else "config.json"
        return step in self.steps or (Path(self.output_dir) / step / marker).exists()


def step_flags(cfg: PipelineConfig, step: str) -> dict[str, Any]:
    """The flags of one step: its section, chained to the previous steps' outputs, with the pipeline seed."""
    out = Path(cfg.output_dir)
    flags = {"seed": cfg.seed, **getattr(cfg, step), "output_dir": str(out / step)}
    base = str(out / "tiny_model") if cfg.produces("tiny_model") else None
    policy = str(out / "sft") if cfg.produces("sft") else cfg.sft.get("model_name_or_path", base)
    if step == "sft" and base:
        flags.setdefault("model_name_or_path", base)
    if step in ("reward", *RL_STEPS):
        flags.setdefault("model_name_or_path", policy)
    if step in ENV_STEPS and cfg.env:  # the pipeline's env, unless the section names its own
        flags.setdefault("env", cfg.env)
        if cfg.env_kwargs is not None:
            kwargs = cfg.env_kwargs
            flags.setdefault("env_kwargs", kwargs if isinstance(kwargs, str) else json.dumps(kwargs))
        if cfg.max_turns is not None:
            flags.setdefault("max_turns", cfg.max_turns)
    if step == "sft" and cfg.produces("rollouts"):
        flags.setdefault("dataset_name", str(out / "rollouts" / "rollouts.jsonl"))
    if step in RL_STEPS and not flags.get("reward_fn") and not flags.get("env"):
        flags.setdefault("reward_model_path", str(out / "reward"))
    return flags


def step_done(cfg: PipelineConfig, step: str) -> bool:
    """A step finished when its summary.json exists (written last, with the model)."""
    return (Path(cfg.output_dir) / step / "summary.json").exists()


def run_step(cfg: PipelineConfig, step: str, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Write the step's flags to OUT/configs/<step>.yaml and run its command's main on it.

    With `resume`, a finished step is skipped (its summary is read back) and an interrupted one continues
    from its latest checkpoint, or starts again in its own folder when it has none.
    """
    step_dir = Path(cfg.output_dir) / step
    if resume and step_done(cfg, step):
        print(f"\n=== rlhf pipeline: {step} already done in {step_dir} (--resume): skipped", flush=True)
        return json.loads((step_dir / "summary.json").read_text())
    flags = step_flags(cfg, step)
    if resume and latest_checkpoint(step_dir) is not None:
        flags["resume_from_checkpoint"] = "true"
    elif (resume or overwrite) and step_dir.exists():
        flags["overwrite_output_dir"] = True  # this pipeline's own step folder: restart the step in it
    path = Path(cfg.output_dir) / "configs" / f"{step}.yaml"
    if is_main_process():
        atomic_write_text(path, yaml.safe_dump(flags, sort_keys=False))
    barrier()
    module = importlib.import_module(STEP_MODULES[step])
    print(f"\n=== rlhf pipeline: {step} -> {flags['output_dir']}", flush=True)
    set_command(step.replace("_", "-"))
    from rlhf.common.errors import DiskFull
    from rlhf.common.stopping import RunStopped

    try:
        result = module.main(["--config", str(path)])
    except RunStopped as stop:  # the step saved a checkpoint: the pipeline's --resume continues from it
        raise RunStopped(stop.signal_name, f"in the {step} step {stop.where}",
                         "continue with the same command and --resume") from None
    except DiskFull as err:  # the same: the pipeline resumes the step from its last checkpoint
        raise DiskFull(f"in the {step} step: " + str(err).replace("--resume_from_checkpoint true", "--resume")) from err
    finally:
        set_command("pipeline")
    barrier()  # the next step reads what rank 0 just saved
    return result if isinstance(result, dict) else {}


# ----------------------------------------------------------------------------------------------- evaluation
NUM_SAMPLES_KEPT = 8  # held-out prompts whose answers (each policy's) the pipeline's summary keeps


def evaluate_agents(cfg: PipelineConfig,
                    samples_out: list[dict[str, Any]] | None = None) -> dict[str, dict[str, float]]:
    """With an env: the SFT and RL policies' mean undiscounted return and success rate on held-out env seeds,
    sampled with the built-in sampler at the RL step's temperature and limits. The first NUM_SAMPLES_KEPT
    episodes go to ``samples_out``: for each held-out env seed, each policy's conversation."""
    from rlhf.envs.evaluation import evaluate_policy

    out, ev = Path(cfg.output_dir), cfg.evaluation
    rl_name = next((s for s in RL_STEPS if s in cfg.steps), "ppo")
    rl = step_flags(cfg, rl_name)
    max_new_tokens = ev.max_new_tokens or rl.get(METHODS[rl_name].length_flag, 32)
    temperature = ev.temperature if ev.temperature is not None else rl.get("temperature", 1.0)
    results: dict[str, dict[str, float]] = {}
    shown: dict[str, list[dict[str, Any]]] = {}
    for name in ("sft", *RL_STEPS):
        if (out / name / "config.json").exists():
            results[name] = evaluate_policy(
                str(out / name), rl["env"], rl.get("env_kwargs"), episodes=ev.num_prompts, seed=cfg.seed,
                temperature=temperature, max_new_tokens=max_new_tokens, max_turns=rl.get("max_turns", 8),
                max_episode_tokens=rl.get("max_episode_tokens"), shown_out=shown.setdefault(name, []),
                num_shown=NUM_SAMPLES_KEPT)
    if samples_out is not None:  # the same held-out seeds for every policy: before and after RL side by side
        seeds = [e["env_seed"] for e in shown.get("sft") or next(iter(shown.values()), [])]
        samples_out[:] = [{"env_seed": seed, "answers": [{"policy": name, **episodes[k]}
                                                          for name, episodes in shown.items() if k < len(episodes)]}
                          for k, seed in enumerate(seeds)]
    return results


def evaluate_policies(cfg: PipelineConfig, rl_summary: dict[str, Any] | None = None,
                      samples_out: list[dict[str, Any]] | None = None) -> dict[str, dict[str, float]]:
    """Gold and learned-reward means and the EOS fraction of the SFT and RL policies' samples on held-out
    prompts; the first NUM_SAMPLES_KEPT prompts with each policy's answer go to ``samples_out``.

    Sampled as the RL step sampled its held-out prompts for ``reward_mean_before/after`` and
    ``eos_fraction_before/after`` (its summary's ``held_out_sampling``: seed, slices, temperature, length),
    so on the same prompts with the same reward the numbers are the RL step's own, not a second estimate.
    With an env: the agents' returns on held-out env seeds (:func:`evaluate_agents`)."""
    if cfg.env:
        return evaluate_agents(cfg, samples_out)
    from rlhf.common.data import load_dataset_dict, render_prompt
    from rlhf.common.models import load_causal_lm, load_reward_model, load_tokenizer
    from rlhf.rl.prompts import HELD_OUT_SEED_OFFSET
    from rlhf.rl.rewards import load_reward_function
    from rlhf.steps.evaluate import mean, reward_model_scores, sample_completions

    out = Path(cfg.output_dir)
    ev = cfg.evaluation
    data = load_dataset_dict(ev.prompts)
    rows = data["train"] if "train" in data else next(iter(data.values()))
    tokenizer = load_tokenizer(str(out / "sft"))
    prompts = [render_prompt(p, tokenizer) for p in rows["prompt"][: ev.num_prompts]]
    rl_name = next((s for s in RL_STEPS if s in cfg.steps), "ppo")
    rl = getattr(cfg, rl_name)
    sampling = (rl_summary or {}).get("held_out_sampling") or {}
    max_new_tokens = ev.max_new_tokens or sampling.get("max_new_tokens") or rl.get(METHODS[rl_name].length_flag, 32)
    temperature = ev.temperature if ev.temperature is not None else sampling.get("temperature", rl.get("temperature", 1.0))
    seed = sampling.get("seed", cfg.seed + HELD_OUT_SEED_OFFSET)
    gold = load_reward_function(ev.reward_fn) if ev.reward_fn else None
    reward_model = load_reward_model(str(out / "reward"), tokenizer) if (out / "reward").exists() else None
    results: dict[str, dict[str, float]] = {}
    kept = [{"prompt": p, "answers": []} for p in prompts[:NUM_SAMPLES_KEPT]]
    for name in ("sft", *RL_STEPS):
        if not (out / name).exists():
            continue
        policy = load_causal_lm(str(out / name), tokenizer)
        samples = sample_completions(policy, tokenizer, prompts, max_new_tokens, temperature,
                                     batch_size=sampling.get("chunk", 64), seed=seed, slice_size=sampling.get("slice"))
        row = {"eos_fraction": mean([float(e) for e in samples.ended])}
        gold_scores = [float(s) for s in gold(samples.prompts, samples.completions)] if gold is not None else None
        if gold_scores is not None:
            row["gold"] = mean(gold_scores)
        if reward_model is not None:
            row["reward"] = mean(reward_model_scores(reward_model, tokenizer, samples.prompts, samples.completions))
        results[name] = row
        for i, sample in enumerate(kept):
            sample["answers"].append({"policy": name, "text": samples.completions[i],
                                      **({"gold": gold_scores[i]} if gold_scores is not None else {})})
    if samples_out is not None:
        samples_out[:] = kept
    return results


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def results_table(summaries: dict[str, dict[str, Any]], evaluation: dict[str, dict[str, float]]) -> str:
    """A short Markdown table of the run's headline numbers, named after the run's RL step (PPO, GRPO
    or RLOO); rows with nothing to show (no reward model in a reward-function run) are left out."""
    rl_step = next((s for s in RL_STEPS if s in evaluation or s in summaries), "ppo")
    rl = rl_step.upper()
    sft, rm, ppo = summaries.get("sft", {}), summaries.get("reward", {}), summaries.get(rl_step, {})
    before, after = evaluation.get("sft", {}), evaluation.get(rl_step, {})
    rows = [
        ("SFT eval loss (before -> after SFT)", f"{_fmt(sft.get('eval_loss_before'))} -> {_fmt(sft.get('eval_loss'))}"),
        (f"held-out env return (SFT -> {rl} policy)", f"{_fmt(before.get('return_mean'))} -> {_fmt(after.get('return_mean'))}"),
        (f"held-out success rate (SFT -> {rl} policy)",
         f"{_fmt(before.get('success_rate'))} -> {_fmt(after.get('success_rate'))}"),
        ("RM held-out pairwise accuracy", _fmt(rm.get("eval_accuracy"))),
        (f"gold score (SFT -> {rl} policy)", f"{_fmt(before.get('gold'))} -> {_fmt(after.get('gold'))}"),
        (f"learned reward (SFT -> {rl} policy)", f"{_fmt(before.get('reward'))} -> {_fmt(after.get('reward'))}"),
        (f"KL({rl} policy \\|\\| SFT reference)", _fmt(ppo.get("kl_mean"))),
        (f"responses ending with EOS (SFT -> {rl})", f"{_fmt(before.get('eos_fraction'))} -> {_fmt(after.get('eos_fraction'))}"),
    ]
    rows = [(name, value) for name, value in rows if set(value.split(" -> ")) != {"n/a"}]
    width = max([len("metric")] + [len(name) for name, _ in rows])
    lines = [f"| {'metric':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name:<{width}} | {value} |" for name, value in rows]
    return "\n".join(lines)


def evaluation_note(cfg: PipelineConfig, rl_summary: dict[str, Any], rl_step: str) -> str:
    """What the comparison rows measured, and whether they are the RL step's own held-out numbers."""
    from rlhf.rl.prompts import HELD_OUT_SEED_OFFSET

    ev = cfg.evaluation
    rl = getattr(cfg, rl_step)
    same_prompts = (rl.get("eval_dataset_name") == ev.prompts
                    and rl_summary.get("num_eval_prompts") == ev.num_prompts)
    note = (f"SFT and {rl_step.upper()} policies sampled on the first {ev.num_prompts} prompts of {ev.prompts} "
            f"(seed {cfg.seed} + {HELD_OUT_SEED_OFFSET}, as the {rl_step} step samples its held-out prompts).")
    if same_prompts:
        return note + (f" These are the {rl_step} step's held-out prompts: its reward_mean_before/after and "
                       "eos_fraction_before/after (summary.json) come from the same samples.")
    return note + (f" The {rl_step} step measured reward_mean_before/after on its own held-out set "
                   f"({rl_summary.get('num_eval_prompts', '?')} prompts of {rl.get('eval_dataset_name') or rl.get('dataset_name')}), "
                   "so its numbers differ from these.")


LABELS = {"objective/scores": "score (reward source)", "objective/rlhf_reward": "score - beta KL",
          "reward": "reward (reward source)", "non_score_reward": "KL penalty in the reward"}


def plot_rl_curves(metrics_path: Path, png_path: Path, method: str = "ppo") -> bool:
    """Plot the reward and the KL over an RL step's updates from its metrics.jsonl (the method's
    ``curve_keys``); False if there is no data."""
    *reward_keys, kl_key = METHODS[method].curve_keys
    if not metrics_path.exists():
        return False
    try:
        rows = [r for r in read_jsonl(metrics_path) if kl_key in r]
    except UserError as err:  # a damaged metrics file costs the plot, not the run
        print(f"warning: no {method} curves: {err}", file=sys.stderr)
        return False
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = "episode" if all("episode" in r for r in rows) else "step"
    x = [r[x_key] for r in rows]
    fig, (ax_reward, ax_kl) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key in reward_keys:
        if all(key in r for r in rows):
            ax_reward.plot(x, [r[key] for r in rows], label=LABELS.get(key, key))
    ax_reward.set_title("reward")
    ax_reward.set_ylabel(f"mean reward of the {method.upper()} batch")
    ax_reward.legend()
    ax_kl.plot(x, [r[kl_key] for r in rows], color="tab:red")
    ax_kl.set_title("KL to the reference policy")
    ax_kl.set_ylabel("KL(policy || reference)" + (", nats per response" if method == "ppo" else ", nats per token"))
    for ax in (ax_reward, ax_kl):
        ax.set_xlabel("episodes (completions sampled)" if x_key == "episode" else f"{method.upper()} step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return True


plot_ppo_curves = plot_rl_curves  # the name of earlier versions


# ----------------------------------------------------------------------------------------------- command
def run_pipeline(cfg: PipelineConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run the configured steps, evaluate, write results.md, summary.json and the curves; return the summary.

    `resume`: continue a killed run in the same output_dir (see the module help); `overwrite`: write into
    a non-empty output_dir, replacing only the pipeline's own files.
    """
    from accelerate import PartialState

    cfg.validate()
    for step in (s for s in RL_STEPS if s in cfg.steps):  # fail before hours of training, not after
        try:
            importlib.import_module(STEP_MODULES[step])
        except ModuleNotFoundError as err:
            if err.name != STEP_MODULES[step]:
                raise
            raise ValueError(
                f"the {step} step needs module {STEP_MODULES[step]}, which is not available in this installation; "
                f"drop '{step}' from steps to run the other steps"
            ) from err
    PartialState()  # join the process group under a distributed launcher, so steps can wait for rank 0
    # The pipeline's folder is locked for the whole run (each step also locks its own subfolder).
    with locked_output_dir(cfg.output_dir, overwrite=overwrite, resume=resume):
        barrier()  # every rank has checked the folder before rank 0 writes into it
        return _run_steps(cfg, resume=resume, overwrite=overwrite)


def _run_steps(cfg: PipelineConfig, resume: bool, overwrite: bool) -> dict[str, Any]:
    summaries = {step: run_step(cfg, step, resume=resume, overwrite=overwrite) for step in cfg.steps}
    summary: dict[str, Any] = {"command": "pipeline", "steps": cfg.steps, "seed": cfg.seed, "summaries": summaries}
    if not is_main_process():
        return summary
    out = Path(cfg.output_dir)
    rl_step = next((s for s in RL_STEPS if s in cfg.steps), "ppo")
    samples: list[dict[str, Any]] = []
    evaluation = evaluate_policies(cfg, summaries.get(rl_step), samples) if cfg.produces("sft") else {}
    table = results_table(summaries, evaluation) + "\n\n" + evaluation_note(cfg, summaries.get(rl_step, {}), rl_step)
    plot = out / f"{rl_step}_curves.png"
    has_plot = plot_rl_curves(out / rl_step / "metrics.jsonl", plot, rl_step)
    summary.update(evaluation=evaluation, samples=samples, plot=str(plot) if has_plot else None)
    atomic_write_text(out / "results.md", table + "\n")
    write_json(out / "summary.json", summary)
    print("\n" + table)
    if has_plot:
        print(f"\nreward and KL over {rl_step.upper()} steps: {plot}")
    gold = evaluation.get(rl_step, {}).get("gold")
    print(f"rlhf pipeline: done; results.md, summary.json and each step's folder in {out}"
          + (f"; gold score of the {rl_step.upper()} policy {gold:.3f}" if isinstance(gold, float) else ""), flush=True)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rlhf.common.utils import HELP_WIDTH

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help-all" in argv:  # every command takes it; the pipeline's flags all fit in --help
        argv = ["--help"]
    parser = argparse.ArgumentParser(
        prog="rlhf pipeline", description=__doc__,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=HELP_WIDTH))
    parser.add_argument("--config", required=True, help="pipeline YAML (e.g. configs/rlhf/tiny.yaml)")
    parser.add_argument("--output_dir", help="override the config's output_dir")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    parser.add_argument("--steps", nargs="+", help=f"run only these steps (of {', '.join(STEPS)})")
    parser.add_argument("--resume", "--resume_from_checkpoint", dest="resume", action="store_true",
                        help="continue a killed run in output_dir: skip finished steps, resume the interrupted one")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="write into a non-empty output_dir (only the pipeline's own files are replaced)")
    args = parser.parse_args(argv)
    cfg = PipelineConfig.from_yaml(args.config)
    for key in ("output_dir", "seed", "steps"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    return run_pipeline(cfg, resume=args.resume, overwrite=args.overwrite_output_dir)
