"""cluster: Slurm, for real: a two-node cluster on one machine, sbatch scripts, and jobs followed to the end.

- ``local_cluster``: ``up`` / ``status`` / ``down`` of a real two-node Slurm cluster in network namespaces
  on this machine, and a rate limit on the link between its nodes;
- ``daemons``: its daemons started, known by PID, stopped, and nothing left behind;
- ``host``: the host side of it (namespaces, veth pairs and a bridge, munge, slurm.conf, daemons);
- ``sbatch``: ``TorchrunJob`` and the sbatch script it renders (rendezvous, signals, requeue);
- ``jobs``: submit, follow (states, log, results), preempt, and the same job run locally without Slurm;
- ``multinode``: the Module 03 labs' jobs, summaries and plots.

May import: common, perf, models, distributed.
"""
