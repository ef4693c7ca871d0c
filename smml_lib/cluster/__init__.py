"""cluster: a real two-node Slurm cluster on one machine, sbatch scripts, job submission and following."""
