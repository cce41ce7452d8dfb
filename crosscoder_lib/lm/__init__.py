"""Access to a language model: loading, hookpoints, and harvesting activations."""
