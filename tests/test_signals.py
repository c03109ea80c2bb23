"""Signal handling belongs to the entry point (`classic-rl train`), not to the agents: `learn`
leaves the process's handlers alone; inside `stop_signals()` Ctrl-C stops at a safe point."""

import signal

import pytest

import classic_rl
from classic_rl.checkpoint import StopRequested, stop_signals
from classic_rl.logger import RunLogger

TINY = dict(learning_starts=50, hidden=[16], buffer_size=1000)


@pytest.mark.slow
def test_learn_leaves_the_signal_handlers_alone(monkeypatch):
    seen = []
    advance = RunLogger.advance

    def record_handler(self, n=1):
        seen.append(signal.getsignal(signal.SIGINT))
        advance(self, n)

    monkeypatch.setattr(RunLogger, "advance", record_handler)
    before = signal.getsignal(signal.SIGINT)
    classic_rl.make("dqn", env="CartPole-v1", **TINY).learn(total_steps=20, progress=False)
    assert seen and all(handler is before for handler in seen)


def test_inside_stop_signals_ctrl_c_stops_at_the_next_whole_step(ctrl_c_at_step):
    ctrl_c_at_step(120)
    agent = classic_rl.make("dqn", env="CartPole-v1", **TINY)
    with stop_signals(), pytest.raises(StopRequested):
        agent.learn(total_steps=1000, progress=False)
    assert agent.num_timesteps == 120  # the step finished (its updates included), nothing after it
