"""The crosscoder: the model, its activations, persistence, training and evaluation."""
