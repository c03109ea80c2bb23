"""The RL machinery ppo, grpo, rloo and reinforce_pp share (see docs/architecture.md)."""
