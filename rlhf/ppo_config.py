"""`PPOConfig`: every setting of `rlhf ppo`, with the field names of TRL's former `PPOConfig`.

TRL users can move over with their flags and YAML files unchanged (`total_episodes`,
`per_device_train_batch_size`, `num_mini_batches`, `kl_coef`, `cliprange`, ...). Defaults follow
"The N+ Implementation Details of RLHF with PPO" where TRL had none (see
`shared/spec/RLHF_PPO_DETAILS.md`). Batch sizes mean what they meant in TRL::

    micro batch      = per_device_train_batch_size              (one forward/backward)
    minibatch        = micro batch * gradient_accumulation_steps (one optimizer step)
    rollout batch    = minibatch * num_mini_batches              (per process, per PPO update)
    updates          = ceil(total_episodes / (rollout batch * world_size))

Flags come from the command line and from `--config FILE.yaml` (a mapping of field names);
the command line wins over the file, the file over the defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class PPOConfig:
    """Settings of PPO fine-tuning of a causal LM (TRL names; see the module docstring)."""

    # ------------------------------------------------------------------ models, data, output
    output_dir: str | None = None
    """Where the trained policy, tokenizer, metrics.jsonl and summary.json go (required)."""
    model_name_or_path: str | None = field(default=None, metadata={"aliases": ["--sft_model_path"]})
    """The SFT policy (hub id or local path); also the frozen reference policy (required).
    `--sft_model_path` (TRL's former name) works too."""
    reward_model_path: str | None = None
    """A sequence-classification reward model (one scalar); exclusive with `reward_fn`."""
    reward_fn: str | None = None
    """`module:function` taking (prompts, completions) and returning one float per pair."""
    value_model_path: str | None = None
    """Where the critic is initialised from; default: the reward model, else the SFT model."""
    value_head_on_policy: bool = False
    """Use a zero-initialised value head on the policy instead of a separate critic network."""
    dataset_name: str | None = None
    """PPO prompts `{"prompt"}`: a hub id, a local directory or a .jsonl/.json/.parquet file (required)."""
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
    """At most this many held-out prompts measure `reward_mean_before/after` and `kl_mean`."""
    max_prompt_length: int | None = None
    """Keep the last this many prompt tokens (None: no truncation)."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weight dtype of the policy, reference and critic (float32 master weights; bf16/fp16 compute
    comes from --bf16/--fp16 mixed precision). The reward model runs in the compute precision."""
    trust_remote_code: bool = False

    # ------------------------------------------------------------------ batch sizes and budget
    total_episodes: int | None = None
    """Prompts sampled over the whole run, all processes together (default: one pass over the data)."""
    num_train_epochs: float = 1.0
    """Passes over the prompts when `total_episodes` is not set."""
    per_device_train_batch_size: int = 8
    """Sequences per forward/backward pass on each process."""
    gradient_accumulation_steps: int = 1
    """Micro batches per optimizer step."""
    num_mini_batches: int = 1
    """Optimizer steps per PPO epoch over one rollout batch."""
    local_rollout_forward_batch_size: int = 64
    """Sequences per generation / no-grad forward chunk during rollouts."""
    num_ppo_epochs: int = 4
    """Passes over each rollout batch (minibatches reshuffled each pass)."""

    # ------------------------------------------------------------------ sampling
    response_length: int = 53
    """Maximum new tokens per response."""
    temperature: float = 0.7
    """Sampling temperature; logprobs for the loss use logits / temperature too."""
    stop_token: str | None = "eos"
    """Truncate each response after this token: 'eos', a token string, or None for no truncation."""
    stop_token_id: int | None = None
    """Token id form of `stop_token` (wins over it)."""
    missing_eos_penalty: float | None = 1.0
    """Subtracted from the score of responses without the stop token (None: no penalty)."""
    ds3_gather_for_generation: bool = True
    """Under DeepSpeed ZeRO-3, gather the policy's parameters once per rollout batch for sampling (one
    full copy per GPU meanwhile) instead of layer by layer at every token (TRL's name)."""
    use_vllm: bool = False
    """Sample with vLLM instead of the built-in KV-cache sampler. Not available yet: the flag is
    refused with an explanation (see docs/scaling.md)."""
    recompute_rollout_logprobs: bool | None = None
    """Recompute the sampled tokens' logprobs with a full forward instead of taking them from
    generation (None: only in half precision, where KV-cached logits drift from a full forward)."""

    # ------------------------------------------------------------------ reward and KL
    kl_coef: float = 0.05
    """beta of the per-token penalty -beta * KL(pi || pi_ref) (initial value when adaptive)."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """k1: log p - log p_ref; k3: (r - 1) - log r with r = p_ref / p (unbiased, always >= 0)."""
    adaptive_kl: bool = False
    """Ziegler et al.'s controller: beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon."""
    kl_target: float = 6.0
    """Target KL per response (nats, summed over tokens) of the adaptive controller."""
    kl_horizon: int = 10000
    """Episodes over which the adaptive controller closes the gap to the target."""
    whiten_rewards: bool = False
    """Rescale the per-token rewards by their std (mean kept)."""
    score_clip: float | None = None
    """Clip reward scores to [-score_clip, score_clip] (None: no clipping)."""

    # ------------------------------------------------------------------ PPO update
    learning_rate: float = 3e-6
    """AdamW learning rate of the policy and the critic (N+: 3e-6 for 1B models; tiny models take ~3e-4)."""
    lr_scheduler_type: Literal["linear", "constant"] = "linear"
    """'linear' decays the learning rate to 0 over the run."""
    adam_epsilon: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm of each optimizer step (None: no clipping)."""
    cliprange: float = 0.2
    """PPO's policy ratio clip epsilon."""
    cliprange_value: float | None = 0.2
    """Clip new values to old values +- this in the value loss (None: unclipped)."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    gamma: float = 1.0
    """Discount over response tokens (1: the score at the end counts fully for every token)."""
    lam: float = 0.95
    """GAE lambda."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, more time; on by default on a GPU)."""

    # ------------------------------------------------------------------ LoRA (peft)
    use_peft: bool = False
    """Train LoRA adapters (peft) on the policy and the critic instead of all weights."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    """LoRA dropout (PPO runs with dropout disabled everywhere, so this has no effect in training)."""
    lora_target_modules: list[str] | None = None
    """Modules that get adapters (None: all linear layers)."""
    reference_from_disabled_adapter: bool = True
    """With LoRA, the reference policy is the policy with its adapter disabled (no second copy)."""

    # ------------------------------------------------------------------ run
    seed: int = 42
    """Base seed; process r samples with seed + r, so ranks draw different responses."""
    bf16: bool | None = field(default=None, metadata={"nargs": "?", "const": True})
    """bf16 mixed precision (None: on where the GPU supports it, off on CPU)."""
    fp16: bool | None = field(default=None, metadata={"nargs": "?", "const": True})
    """fp16 mixed precision (None: on a GPU without bf16)."""
    use_cpu: bool | None = field(default=None, metadata={"nargs": "?", "const": True})
    """Train on the CPU even if a GPU is present (None: CPU only without a GPU)."""
    logging_steps: int = 1
    """Write a metrics.jsonl line every this many PPO updates."""
    num_sample_generations: int = 10
    """Print sample completions this many times over the run (0: never)."""
    disable_tqdm: bool = False

    # ------------------------------------------------------------------ derived sizes
    def validate(self) -> PPOConfig:
        """Raise ValueError naming the field and the fix for settings that cannot run."""
        for name in ("output_dir", "model_name_or_path", "dataset_name"):
            if not getattr(self, name):
                raise ValueError(f"rlhf ppo: --{name} is required")
        if (self.reward_model_path is None) == (self.reward_fn is None):
            raise ValueError("rlhf ppo: give exactly one of --reward_model_path (a reward model) or "
                             "--reward_fn module:function (a Python scorer)")
        positive = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_mini_batches",
                    "num_ppo_epochs", "response_length", "local_rollout_forward_batch_size", "logging_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"rlhf ppo: --{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"rlhf ppo: --temperature must be > 0 (sampling), got {self.temperature}")
        if self.total_episodes is not None and self.total_episodes < 1:
            raise ValueError(f"rlhf ppo: --total_episodes must be >= 1, got {self.total_episodes}")
        if self.num_eval_prompts < 1:
            raise ValueError(f"rlhf ppo: --num_eval_prompts must be >= 1, got {self.num_eval_prompts}")
        if not 0.0 <= self.lam <= 1.0 or not 0.0 <= self.gamma <= 1.0:
            raise ValueError("rlhf ppo: --gamma and --lam must lie in [0, 1]")
        if self.use_vllm:
            _refuse_vllm()
        return self

    @property
    def mini_batch_size(self) -> int:
        """Sequences per optimizer step on one process."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def local_batch_size(self) -> int:
        """Sequences per rollout on one process."""
        return self.mini_batch_size * self.num_mini_batches

    def num_updates(self, world_size: int, num_prompts: int) -> int:
        """PPO updates (rollout + optimisation rounds) of the run."""
        episodes = self.total_episodes
        if episodes is None:
            episodes = max(1, int(self.num_train_epochs * num_prompts))
        return max(1, math.ceil(episodes / (self.local_batch_size * world_size)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _refuse_vllm() -> None:
    """``--use_vllm`` cannot run: say why (vLLM missing, or the path not implemented) and what to do."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "rlhf ppo: --use_vllm needs vLLM, which is not installed (pip install vllm); without the flag, "
            "rlhf ppo samples with its built-in KV-cache sampler"
        )
    raise ValueError(
        "rlhf ppo: --use_vllm is not available yet: vLLM is installed, but rlhf ppo has no vLLM generation "
        "path (no weight sync from the policy to a colocated vLLM engine); drop --use_vllm to sample with the "
        "built-in KV-cache sampler (see docs/scaling.md)"
    )


def _docstrings_as_help(cls: type) -> type:
    """Copy each field's docstring (the string literal under it) into its argparse help, so
    `rlhf ppo --help` explains every flag while the dataclass stays readable (CleanRL style)."""
    import ast
    import inspect
    import textwrap
    from types import MappingProxyType

    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    except (OSError, TypeError, IndexError):  # no source (e.g. frozen install): flags keep no help
        return cls
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    for f in dataclasses.fields(cls):
        if f.name in docs and "help" not in f.metadata:
            f.metadata = MappingProxyType({**f.metadata, "help": docs[f.name]})
    return cls


_docstrings_as_help(PPOConfig)


def parse_ppo_args(argv: list[str] | None = None) -> PPOConfig:
    """Build a validated `PPOConfig` from `--config FILE.yaml` and command-line flags.

    Precedence, lowest first: the dataclass defaults, what the hardware suggests (bf16 on a capable
    GPU, fp32 on CPU, gradient checkpointing on GPU), the YAML file, the command line.
    """
    from rlhf.utils import hardware_defaults, parse_args

    (config,) = parse_args([PPOConfig], argv, defaults=hardware_defaults(), description=__doc__)[:1]
    return config.validate()


__all__ = ["PPOConfig", "parse_ppo_args"]
