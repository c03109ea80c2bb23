"""One module per RL method: its config, advantages and loss (registered in rlhf.methods.registry)."""
