"""Joint training of all exits, resuming, fine-tuning."""
