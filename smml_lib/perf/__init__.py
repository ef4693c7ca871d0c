"""perf: what the hardware is and what it really delivers (specs, timing, GEMMs, roofline, telemetry)."""
