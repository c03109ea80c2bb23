"""Algorithm math shared across agents and with `rlhf`: the PPO core, n-step returns, distributional projection."""
