"""LM agents in environments (`rlhf ppo|grpo|rloo --env`, rlhf/envs/): the conversation's layout and
loss mask, a one-turn env against the single-turn trainer, PPO's GAE across turns by hand, the text
adapters, bad envs and flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model
from gymnasium.utils.env_checker import check_env

from classic_rl.safe_io import UserError
from rlhf.cli import main as cli_main
from rlhf.envs.adapters import FrozenLakeText
from rlhf.envs.credit import spread_to_tokens, turn_gae
from rlhf.envs.make import EnvError, EnvSpec, make_text_env
from rlhf.methods import grpo, ppo, reinforce_pp, rloo
from rlhf.methods.grpo_config import parse_grpo_args
from rlhf.methods.ppo_config import parse_ppo_args
from rlhf.methods.reinforce_pp import parse_reinforce_pp_args
from rlhf.methods.rloo_config import parse_rloo_args

DATA = Path(__file__).resolve().parents[1] / "rlhf" / "data"
QUIET = ["--disable_tqdm", "--report_to", "none", "--use_cpu", "--num_sample_generations", "0", "--seed", "0"]
LAKE = ["--env", "FrozenLake-v1", "--env_kwargs", '{"is_slippery": false}', "--max_turns", "3", "--num_eval_prompts", "4"]
GROUP = ["--per_device_train_batch_size", "8", "--max_completion_length", "4", "--max_steps", "1"]
METHODS = {
    "ppo": (ppo, ppo.PPOTrainer, parse_ppo_args, ["--total_episodes", "8", "--per_device_train_batch_size", "8",
                                                   "--response_length", "4", "--num_ppo_epochs", "1"]),
    "grpo": (grpo, grpo.GRPOTrainer, parse_grpo_args, [*GROUP, "--num_generations", "4"]),
    "rloo": (rloo, rloo.RLOOTrainer, parse_rloo_args, [*GROUP, "--num_generations", "4"]),
    "reinforce_pp": (reinforce_pp, reinforce_pp.ReinforcePPTrainer, parse_reinforce_pp_args, GROUP),
}
ADAPTED = [("FrozenLake-v1", {"is_slippery": False}), ("CliffWalking-v1", {}), ("Taxi-v4", {}), ("Blackjack-v1", {}),
           ("GridWorld4x3-v0", {})]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), max_position_embeddings=512)


def trainer_for(command: str, tiny: Path, out: Path, *extra: str):
    _, trainer_class, parse, flags = METHODS[command]
    return trainer_class(parse(["--model_name_or_path", str(tiny), "--output_dir", str(out), *flags, *QUIET, *extra]))


# ----------------------------------------------------------------------------- the conversation's layout
def test_episodes_keep_the_sampled_tokens_and_mask_the_env_text(tiny, tmp_path):
    """A random model's replies name no move, so every episode runs its 3 turns: query = the first user
    turn, then reply | env turn | reply | env turn | reply | final observation (truncated). The policy's
    tokens are the sampler's own, the env's are the chat template's text, and only the policy's are trained."""
    trainer = trainer_for("grpo", tiny, tmp_path / "g", *LAKE)
    sampled = []
    real_sample = trainer.sampler.sample

    def recording(prompt_ids, generator):
        samples = real_sample(prompt_ids, generator)
        sampled.append((prompt_ids, samples.responses))
        return samples

    trainer.sampler.sample = recording
    batch = trainer.rollout(*trainer.next_batch(), trainer.sample_generator)
    assert len(sampled) == 3 and batch.turns.tolist() == [3] * 8
    tok, stop = trainer.tokenizer, trainer.stop_id
    for b in range(8):
        query = batch.query_responses[b, : batch.context_length][batch.attention_mask[b, : batch.context_length].bool()]
        assert tok.decode(query).startswith("<|user|>\nFrozen lake 4x4")
        real = batch.mask[b]
        assert (real.long().diff() <= 0).all()  # real tokens, then pad
        # each policy segment: exactly the tokens that turn's sampler call returned (up to the stop token)
        for k in range(3):
            start, end = batch.turn_start[b, k].item(), batch.turn_end[b, k].item()
            drawn = sampled[k][1][b].tolist()
            cut = drawn[: drawn.index(stop) + 1] if stop in drawn else drawn
            assert batch.responses[b, start : end + 1].tolist() == cut
            # the context of turn k+1 is the context of turn k + this reply + the env turn
            if k < 2:
                nxt = sampled[k + 1][0][b]
                assert nxt[: len(sampled[k][0][b]) + len(cut)] == sampled[k][0][b] + cut
        trained = batch.loss_mask[b].bool()
        env_text = tok.decode(batch.responses[b][real & ~trained])
        assert env_text.count("<|user|>") == 3 and "invalid move" in env_text  # two turns and the final observation
        assert (batch.token_turn[b][trained] >= 0).all() and (batch.token_turn[b][~trained] == -1).all()
    assert batch.terminated.sum() == 0 and batch.scores.tolist() == [0.0] * 8
    for name in ("logprobs", "ref_logprobs", "kl", "values"):
        assert (getattr(batch, name)[batch.loss_mask == 0] == 0).all(), name


@pytest.mark.parametrize("command", sorted(METHODS))
def test_environment_tokens_get_exactly_zero_gradient(command, tiny, tmp_path, monkeypatch):
    """The method's loss on a multi-turn rollout, with the per-token log-probabilities as a leaf: the env's
    tokens (mask 1, loss_mask 0) get exactly zero gradient, the policy's do not."""
    module = METHODS[command][0]
    trainer = trainer_for(command, tiny, tmp_path / command, *LAKE)
    batch = trainer.rollout(*trainer.next_batch(), trainer.sample_generator)
    env_tokens = batch.mask & (batch.loss_mask == 0)
    assert env_tokens.sum() > 0
    leaves, captured = [], {}
    real = module.logprobs_and_entropy

    def leaf_logprobs(logits, tokens, temperature):
        logprobs, entropy = real(logits, tokens, temperature)
        leaves.append(logprobs.detach().requires_grad_())
        return leaves[-1], entropy

    def capture(tensors, passes, shuffle, loss_fn):
        captured["tensors"] = tensors
        captured["loss"], stats = loss_fn(tensors)
        return [stats], [0.0]

    monkeypatch.setattr(module, "logprobs_and_entropy", leaf_logprobs)
    monkeypatch.setattr(trainer, "optimize_on_batch", capture)
    # a reward that varies, so the group advantages are not all zero
    batch.scores = torch.linspace(-1, 1, batch.scores.numel())
    if command == "ppo":
        batch.turn_rewards = torch.zeros_like(batch.turn_rewards)
        batch.turn_rewards[:, 0] = batch.scores
    trainer.model.train()
    trainer.update_policy(batch)
    captured["loss"].backward()
    grad = leaves[0].grad
    assert torch.equal(captured["tensors"]["mask"], batch.loss_mask)
    assert (grad[env_tokens] == 0).all()
    assert grad[batch.loss_mask > 0].abs().sum() > 0


# ----------------------------------------------------------------------------- one turn = the single-turn trainer
def _prompt_files(tmp_path: Path, n: int = 24) -> tuple[Path, Path, list[str]]:
    texts = [json.loads(line)["prompt"] for line in (DATA / "prompts.jsonl").read_text().splitlines()[:n]]
    train, held_out = tmp_path / "chat.jsonl", tmp_path / "chat_eval.jsonl"
    # as chat messages, so the single-turn trainer renders them with the chat template as the env's first turn is
    train.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": t}]}) + "\n" for t in texts))
    held_out.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": t}]}) + "\n" for t in texts[:4]))
    return train, held_out, texts


@pytest.mark.parametrize("command", ["grpo", "rloo", "ppo"])
def test_a_one_turn_env_gives_the_single_turn_trainers_numbers(command, tiny, tmp_path):
    """PromptEnv (a prompt, one reply, the reward function's score) against the same prompts as a dataset, same
    seed: the same rollout, and for the group methods the same update (every logged number). PPO's advantages
    differ by design (GAE over turns, not tokens), so only its rollout is compared."""
    train, held_out, texts = _prompt_files(tmp_path)
    reward = "same_numbers_reward:letter_fraction"
    shared = ["--num_eval_prompts", "4", "--missing_eos_penalty", "0.5"]  # no reply stops: every score is penalised
    single = trainer_for(command, tiny, tmp_path / "single", "--dataset_name", str(train), "--eval_dataset_name",
                         str(held_out), "--reward_fn", reward, *shared)
    env = trainer_for(command, tiny, tmp_path / "env", "--env", "rlhf.envs.text_envs:PromptEnv",
                      "--env_kwargs", json.dumps({"prompts": texts, "reward_fn": reward}), *shared)
    prompts, ids = single.next_batch()
    rendered = {single.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                     add_generation_prompt=True): i for i, t in enumerate(texts)}
    seeds = [rendered[p] for p in prompts]
    if command == "ppo":
        a = single.rollout(prompts, ids, single.sample_generator)
        b = env.rollout([str(s) for s in seeds], seeds, env.sample_generator)
        for name in ("query_responses", "attention_mask", "responses", "mask", "loss_mask", "logprobs", "ref_logprobs",
                     "values", "scores", "raw_scores", "kl"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=0, atol=0, msg=name)
        return
    m_single, _ = single.step(prompts, ids)
    m_env, _ = env.step([str(s) for s in seeds], seeds)
    common = [k for k in m_single if k in m_env and not k.startswith(("time/", "eps"))]
    assert len(common) >= 10
    for key in common:
        assert m_env[key] == pytest.approx(m_single[key], rel=1e-6, abs=1e-7), key


# ----------------------------------------------------------------------------- PPO's GAE across turns
def test_turn_gae_against_a_hand_computed_example():
    """Episode 0: 2 turns, terminated (no bootstrap). Episode 1: 3 turns, truncated (bootstraps 0.5)."""
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, -0.25]])
    values = torch.tensor([[0.2, 0.6, 0.0], [0.1, 0.3, 0.4]])
    turn_mask = torch.tensor([[True, True, False], [True, True, True]])
    terminated = torch.tensor([True, False])
    bootstrap = torch.tensor([7.0, 0.5])  # episode 0's is ignored: it terminated
    adv, ret = turn_gae(rewards, values, turn_mask, terminated, bootstrap, gamma, lam)
    # episode 0: delta_1 = 1 - 0.6; delta_0 = 0 + 0.9 * 0.6 - 0.2
    d01, d00 = 1.0 - 0.6, 0.9 * 0.6 - 0.2
    a01 = d01
    a00 = d00 + gamma * lam * a01
    # episode 1: delta_2 = -0.25 + 0.9 * 0.5 - 0.4; delta_1 = 0 + 0.9 * 0.4 - 0.3; delta_0 = 0.5 + 0.9 * 0.3 - 0.1
    d12, d11, d10 = -0.25 + 0.9 * 0.5 - 0.4, 0.9 * 0.4 - 0.3, 0.5 + 0.9 * 0.3 - 0.1
    a12 = d12
    a11 = d11 + gamma * lam * a12
    a10 = d10 + gamma * lam * a11
    expected = torch.tensor([[a00, a01, 0.0], [a10, a11, a12]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, (expected + values) * turn_mask)
    # spread: every policy token of turn k gets A_k; env text and pad get 0
    token_turn = torch.tensor([[0, 0, -1, 1, -1, -1], [0, -1, 1, 1, -1, 2]])
    spread = spread_to_tokens(adv, token_turn)
    torch.testing.assert_close(spread, torch.tensor([[a00, a00, 0, a01, 0, 0], [a10, 0, a11, a11, 0, a12]]))


# ----------------------------------------------------------------------------- text adapters
@pytest.mark.parametrize("env_id,kwargs", ADAPTED, ids=[e for e, _ in ADAPTED])
def test_text_adapters_pass_the_gymnasium_checker_and_take_any_reply(env_id, kwargs):
    env = make_text_env(env_id, kwargs)
    check_env(env, skip_render_check=True)  # Text spaces; random strings as actions
    observation, info = env.reset(seed=3)
    assert env.observation_space.contains(observation) and set(info["valid_actions"]) <= set(env.moves)
    for reply in ("", "???", "x" * 500, "\x00\x05 weird", info["valid_actions"][0], info["valid_actions"][0].upper() + "!"):
        observation, reward, terminated, truncated, info = env.step(reply)
        assert env.observation_space.contains(observation), observation
        assert isinstance(reward, float) and "valid_actions" in info
        if terminated or truncated:
            env.reset(seed=4)


def test_frozen_lake_adapter_reaches_the_goal_and_reports_success():
    env = make_text_env("FrozenLake-v1", {"is_slippery": False})
    assert isinstance(env, FrozenLakeText)
    observation, info = env.reset(seed=0)
    assert "SFFF\nFHFH\nFFFH\nHFFG" in observation and info["valid_actions"] == ["down", "right"]
    for move in ("down", "down", "right", "right", "down"):
        _, reward, terminated, _, info = env.step(move)
        assert reward == 0.0 and not terminated and info["success"] is False
    _, reward, terminated, _, info = env.step("Right.")
    assert reward == 1.0 and terminated and info["success"] is True


# ----------------------------------------------------------------------------- bad envs and flags
@pytest.mark.parametrize("argv,message", [
    (["--env", "FrozenLak-v1"], "--env FrozenLak-v1: Environment `FrozenLak` doesn't exist"),
    (["--env", "no_such_module:Env"], "cannot import module 'no_such_module'"),
    (["--env", "rlhf.envs.text_envs:NoSuchEnv"], "has no class 'NoSuchEnv'"),
    (["--env", "CartPole-v1"], "--env needs Text spaces"),
    (["--env", "FrozenLake-v1", "--env_kwargs", "{bad"], "--env_kwargs '{bad': not JSON"),
    (["--env", "FrozenLake-v1", "--env_kwargs", '{"no_such_kwarg": 1}'], "no_such_kwarg"),
])
def test_a_bad_env_is_one_line_with_exit_2(argv, message, tmp_path, capsys):
    code = cli_main(["rollouts", *argv, "--episodes", "2", "--output_file", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_env_flags_are_checked_before_any_model_loads(tmp_path):
    base = ["--model_name_or_path", "x", "--output_dir", str(tmp_path / "o"), *LAKE]
    with pytest.raises(UserError, match="--reward_fn cannot be combined with --env"):
        parse_grpo_args([*base, "--reward_fn", "a:b"])
    with pytest.raises(UserError, match="--env needs --total_episodes"):
        parse_ppo_args(base)
    with pytest.raises(UserError, match="--max_turns must be >= 1"):
        parse_grpo_args([*base, "--max_turns", "0"])


@pytest.mark.parametrize("env_name,message", [
    ("text_envs:RaisingEnv", r"--env text_envs:RaisingEnv \(episode seed 5, turn 2\): step\('go'\) raised RuntimeError: boom"),
    ("text_envs:NumberEnv", r"\(episode seed 5, turn 1\): step returned a non-string observation int 3"),
    ("text_envs:BadRewardEnv", r"\(episode seed 5, turn 1\): the reward must be a finite number, got float nan"),
])
def test_an_env_that_misbehaves_is_named_with_its_turn(env_name, message):
    from rlhf.envs.policies import RandomPolicy
    from rlhf.envs.rollouts import play_episode

    env = EnvSpec(env_name).make()
    with pytest.raises(EnvError, match=message):
        play_episode(env, RandomPolicy(0), 5, max_turns=10)


def test_an_env_that_never_ends_stops_with_one_line(monkeypatch):
    from rlhf.envs import episodes, rollouts
    from rlhf.envs.policies import RandomPolicy

    monkeypatch.setattr(rollouts, "HARD_TURN_LIMIT", 50)
    env = EnvSpec("text_envs:EndlessEnv").make()
    with pytest.raises(EnvError, match=r"turn 50\): the episode did not end after 50 turns; set --max_turns"):
        rollouts.play_episode(env, RandomPolicy(0), 1, max_turns=None)
    assert episodes.HARD_TURN_LIMIT == 10_000
    assert rollouts.play_episode(env, RandomPolicy(0), 1, max_turns=7).turns == 7  # with a limit: truncated


# ----------------------------------------------------------------------------- rollouts -> sft data
def test_rollouts_write_sft_conversations(tmp_path):
    out = tmp_path / "r.jsonl"
    assert cli_main(["rollouts", "--env", "FrozenLake-v1", "--env_kwargs", '{"is_slippery": false}', "--policy", "random",
                     "--episodes", "20", "--max_turns", "5", "--output_file", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20 and all(set(r) == {"messages"} for r in rows)
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles[0] == "user" and roles[-1] == "assistant" and roles[::2] == ["user"] * len(roles[::2])
        assert all(m["content"] in ("left", "down", "right", "up") for m in row["messages"][1::2])
    again = tmp_path / "again.jsonl"
    cli_main(["rollouts", "--env", "FrozenLake-v1", "--env_kwargs", '{"is_slippery": false}', "--episodes", "20",
              "--max_turns", "5", "--output_file", str(again)])
    assert again.read_text() == out.read_text()  # seeded


# ----------------------------------------------------------------------------- the agent pipeline
def test_agent_pipeline_config_gives_every_step_the_env():
    from rlhf.common.utils import config_section
    from rlhf.steps.pipeline import PipelineConfig, step_flags

    path = Path(__file__).resolve().parents[1] / "configs" / "rlhf" / "agent_tiny.yaml"
    cfg = PipelineConfig.from_yaml(path).validate()
    assert cfg.steps == ["rollouts", "tiny_model", "sft", "grpo"]
    out = Path(cfg.output_dir)
    rollouts, sft = step_flags(cfg, "rollouts"), step_flags(cfg, "sft")
    assert rollouts["env"] == "FrozenLake-v1" and json.loads(rollouts["env_kwargs"]) == {"is_slippery": False}
    assert rollouts["output_dir"] == str(out / "rollouts") and rollouts["max_turns"] == 10
    assert sft["dataset_name"] == str(out / "rollouts" / "rollouts.jsonl") and "env" not in sft
    for method in ("grpo", "rloo", "ppo"):
        flags = step_flags(cfg, method)
        assert flags["env"] == "FrozenLake-v1" and "reward_model_path" not in flags
        assert flags["model_name_or_path"] == str(out / "sft")
    # a command run on its own with this file reads its section and the top-level env
    import yaml

    section = config_section(yaml.safe_load(path.read_text()), "grpo", path)
    assert section["env"] == "FrozenLake-v1" and json.loads(section["env_kwargs"]) == {"is_slippery": False}
    assert "env" not in config_section(yaml.safe_load(path.read_text()), "sft", path)
    from rlhf.common.utils import set_command

    set_command("grpo")  # as `rlhf grpo` does
    try:
        args = parse_grpo_args(["--config", str(path), "--model_name_or_path", "m", "--output_dir", "o"])
    finally:
        set_command(None)
    assert args.env == "FrozenLake-v1" and args.max_turns == 10 and args.num_generations == 8


def test_a_rollouts_step_needs_an_env(tmp_path):
    from rlhf.steps.pipeline import PipelineConfig

    with pytest.raises(ValueError, match="set the top-level `env`"):
        PipelineConfig(output_dir=str(tmp_path), steps=["rollouts", "tiny_model", "sft"]).validate()


@pytest.mark.parametrize("env,message", [
    ("text_envs:RaisingEnv", "rlhf grpo: error: --env text_envs:RaisingEnv (episode seed 1073741824, turn 2): step("),
    ("FrozenLak-v1", "rlhf grpo: error: --env FrozenLak-v1: Environment `FrozenLak` doesn't exist"),
])
def test_the_trainer_reports_a_bad_env_in_one_line(env, message, tiny, tmp_path, capsys):
    """An unknown env fails before the model loads; one that raises mid-episode names its seed and turn."""
    code = cli_main(["grpo", "--model_name_or_path", str(tiny), "--output_dir", str(tmp_path / "o"), "--env", env,
                     *METHODS["grpo"][3], *QUIET, "--num_eval_prompts", "2"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert code == 2 and len(err) == 1 and err[0].startswith(message), err


def test_rollouts_with_a_classic_rl_run_act_with_its_agent(tmp_path, capsys):
    import classic_rl

    agent = classic_rl.make("q_learning", env="FrozenLake-v1", env_kwargs={"is_slippery": False}, seed=0, gamma=0.95)
    agent.learn(total_steps=5000, progress=False)
    agent.save(tmp_path / "q")
    out = tmp_path / "q.jsonl"
    assert cli_main(["rollouts", "--env", "FrozenLake-v1", "--env_kwargs", '{"is_slippery": false}', "--policy",
                     str(tmp_path / "q"), "--episodes", "3", "--max_turns", "10", "--output_file", str(out)]) == 0
    assert "mean return +1.000, success 100.0%" in capsys.readouterr().out  # the greedy Q-learning path
    moves = [m["content"] for m in json.loads(out.read_text().splitlines()[0])["messages"][1::2]]
    assert len(moves) == 6  # the shortest path
    assert cli_main(["rollouts", "--env", "CliffWalking-v1", "--policy", str(tmp_path / "q"), "--episodes", "1",
                     "--output_file", str(out)]) == 2
    assert "the agent was trained on FrozenLake-v1, not --env CliffWalking-v1" in capsys.readouterr().err
