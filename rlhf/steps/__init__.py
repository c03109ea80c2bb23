"""The TRL-based steps (tiny model, sft, reward, label) and the pipeline that runs the steps in a row."""
