"""models: Llama checkpoints, their anatomy, inference and memory predictions."""
