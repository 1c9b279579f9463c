"""Training: losses, the model-frame transform, iterative prompts, the jitted step, checkpoints, the loop."""
