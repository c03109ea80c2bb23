"""`python tests/rlhf_ctrl_c.py AT [--twice] -- COMMAND FLAGS...`: run `rlhf COMMAND FLAGS` and, when update AT
of an RL method (or optimizer step AT of `rlhf sft` / `rlhf reward`) begins, print ``WAITING FOR CTRL-C`` and
wait there (before its generation / forward) until the test's signal arrives, so a test presses Ctrl-C at a
known point of a real process. The wait ends once the signal is recorded (``SIGNAL RECEIVED``); with
``--twice`` it goes on until a second signal stops the run at once (two signals sent together would reach
Python as one)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def wait_for_signal(twice: bool) -> None:
    from classic_rl.checkpoint import STOP

    print(f"WAITING FOR CTRL-C {os.getpid()}", flush=True)
    deadline = time.monotonic() + 120
    while STOP.signal_name is None and time.monotonic() < deadline:
        time.sleep(0.02)
    print("SIGNAL RECEIVED", flush=True)
    while twice and time.monotonic() < deadline:
        time.sleep(0.02)


def main() -> int:
    at, twice, argv = int(sys.argv[1]), "--twice" in sys.argv[2:sys.argv.index("--")], sys.argv[sys.argv.index("--") + 1:]
    from transformers import Trainer

    from rlhf.cli import main as rlhf_main
    from rlhf.rl.trainer import RLTrainer

    step, training_step = RLTrainer.step, Trainer.training_step
    calls = {"update": 0, "micro": 0}

    def step_then_wait(self, *args, **kwargs):
        calls["update"] += 1
        if calls["update"] == at:
            wait_for_signal(twice)
        return step(self, *args, **kwargs)

    def training_step_then_wait(self, *args, **kwargs):
        if self.state.global_step + 1 == at and calls["micro"] == 0:
            calls["micro"] = 1
            wait_for_signal(twice)
        return training_step(self, *args, **kwargs)

    RLTrainer.step, Trainer.training_step = step_then_wait, training_step_then_wait
    return rlhf_main(argv)


if __name__ == "__main__":
    sys.exit(main())
