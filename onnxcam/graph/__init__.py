"""Graph rewriting passes: normalise a model, expose tensors, append gradients."""
