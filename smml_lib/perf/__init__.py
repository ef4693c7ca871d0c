"""perf: what the hardware is, and what it really delivers when we measure it carefully.

- ``hardware``: the devices torch sees, and the datasheet table (dense peaks, bandwidth, memory);
- ``environment``: the software and hardware record attached to every measurement; ``nvml`` reads
  the driver's clocks and versions;
- ``timing``: the one timing harness (CUDA events with warm-up and L2 flush, or ``perf_counter``; medians);
- ``ceilings``: the best matmul and the fastest copy this device achieves (its measured roofline);
- ``gemm``: FLOPs, bytes and intensity of a matrix multiply, and timed sweeps of GEMM shapes;
- ``mamf``: the search for the maximum achievable matmul within a time budget;
- ``roofline``: ridge points, attainable TFLOP/s, critical batch sizes, and the roofline plot;
- ``telemetry`` and ``telemetry_backends``: a background sampler of GPU (NVML) or CPU utilization;
- ``memtrack``: bytes held by parameters, gradients, optimizer states and saved activations;
- ``compiling``: eager versus ``torch.compile``: what fusion saves, what compilation costs;
- ``results``: save a measurement with its environment, load it back (yours, else the reference).

May import: common.
"""
