"""Where the training loops' parts live: collectors, rollout storage, normalisers, periodic
evaluation (one place each; the old import paths keep working)."""

import numpy as np

import classic_rl
from classic_rl import buffers, collectors, evaluation, normalizers
from classic_rl.agents import off_policy, on_policy


def test_old_import_paths_name_the_same_objects():
    assert on_policy.RolloutCollector is collectors.RolloutCollector
    assert on_policy.Rollout is buffers.Rollout
    assert on_policy.RunningMeanStd is normalizers.RunningMeanStd
    assert on_policy.RewardScaler is normalizers.RewardScaler
    assert off_policy.EnvRunner is collectors.EnvRunner and off_policy.VectorEnvRunner is collectors.VectorEnvRunner


def test_periodic_evaluation_is_shared_and_saved(tmp_path):
    runs = {
        "a2c": dict(num_envs=2, n_steps=5),
        "dqn": dict(learning_starts=50, hidden=[16]),
    }
    for algo, settings in runs.items():
        agent = classic_rl.make(algo, env="CartPole-v1", seed=1, eval_freq=100, eval_episodes=2, **settings)
        assert isinstance(agent, evaluation.PeriodicEvaluation)
        agent.learn(total_steps=300, progress=False)
        steps = [step for step, _, _ in agent.eval_history]
        assert len(steps) == 3 and steps[0] >= 100 and np.all(np.diff(steps) > 0), (algo, steps)
        agent.save(tmp_path / algo)
        loaded = classic_rl.load(tmp_path / algo)
        assert loaded.eval_history == agent.eval_history
