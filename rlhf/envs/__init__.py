"""LM agents in environments: multi-turn episodes as RL experience for `rlhf ppo|grpo|rloo --env ENV`.

    make.py         ENV (a gymnasium id or `module:Class`) -> an env with Text spaces, one-line errors
    adapters.py     text adapters of Discrete envs: FrozenLake, CliffWalking, Taxi, Blackjack, GridWorld
    text_envs.py    small Text-space envs shipped as examples (a prompt dataset as a one-turn env)
    chat.py         the conversation's tokens: first user turn, environment turns (chat template)
    episodes.py     episodes side by side: reset, sample a turn for every running episode, step
    seeds.py        EnvSeedStream: the reset seeds of training groups and held-out episodes
    experience.py   EnvExperienceMaker -> EnvRollout (the Rollout the methods train on, plus turns)
    credit.py       PPO's credit assignment across turns (GAE over the turn-level sequence)
    evaluation.py   mean return and success rate on held-out seeds (trainer and pipeline)
    policies.py     the non-LM policies of `rlhf rollouts` (random, a classic_rl agent)
    rollouts.py     `rlhf rollouts`: episodes as {"messages": [...]} conversations (SFT data)
    config.py       the --env flags' checks

See docs/rlhf_envs.md.
"""
