"""serving: an OpenAI-compatible inference server with batching, and its load generator."""
