"""models: Llama checkpoints, what is inside them, how fast they run, and how much memory they need.

- ``anatomy``: parameters, bytes, KV cache and FLOPs predicted from a config alone (``ModelDims``), and the
  published shapes of Llama-3.2-1B, Llama-3.1-8B and Llama-2-13B (``preset_config``);
- ``loading``: ``load_llama`` from a hub id, a local folder, an S3 prefix, or the offline ``"tiny"`` model,
  with errors that say what to do (gated model, no network, wrong path, out of memory);
- ``tiny``: the offline tiny Llama built on this machine, and random-weight twins of published models;
- ``weights``: a checkpoint's files and tensors, read from safetensors headers without loading weights;
- ``inference``: TTFT, TPOT and tokens/s of generation, and inference memory measured;
- ``workload``: a Llama's GEMM shapes and where its prefill and decode steps sit on the roofline;
- ``ladder``: the decode optimization ladder (dtype, attention kernel, static cache, compile, CUDA graphs);
- ``device_map``: a model too big for one GPU, split over several (accelerate's device map);
- ``planner``: training and inference memory per GPU for each parallel strategy, and whether it fits;
- ``scaling``: training compute (6·N·D), compute-optimal sizes, and a budget's worth of GPU hours.

May import: common, perf.
"""
