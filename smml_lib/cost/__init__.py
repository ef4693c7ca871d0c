"""cost: what capacity costs, and what a token or a training run costs on it.

- ``pricing``: instance prices, live from AWS with credentials, else the bundled snapshot (stated which);
- ``calculators``: dollars per million tokens, per training run, per purchase option, and idle waste;
- ``spot_economics``: interruptions, checkpoint intervals (Young/Daly) and spot against on-demand;
- ``spot_drill``: the spot interruption drill: notice, stop, checkpoint, resume, steps lost;
- ``metadata_service``: a stand-in for the EC2 instance metadata service that serves interruption notices.

May import: common, perf, models, distributed, checkpoint.
"""
