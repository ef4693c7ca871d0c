"""checkpoint: sharded training checkpoints, the cooperative stop, and S3 / local targets."""
