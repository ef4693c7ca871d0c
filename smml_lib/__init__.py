"""smml_lib: the library behind the SMML Lab notebooks.

The notebooks tell the story; this package does the work. Modules are small and flat:

- ``lab``        start a lab (mode, device), record key figures, the final check cell
- ``hardware``   device detection, datasheet spec table, measured ceilings
- ``timing``     the one timing harness every module uses (CUDA events / perf_counter)
- ``models``     ``load_llama`` from a hub id, a local directory or the offline ``"tiny"`` Llama
- ``anatomy``    parameter counts, memory and FLOP estimates from a Llama config
- ``inference``  prefill / decode timing: TTFT, TPOT, tokens/s
- ``doctor``     the pre-workshop environment table (``smml doctor``)
- ``labs``       the headless runner behind ``smml labs`` and its HTML report

Importing the package is cheap: heavy libraries (torch, transformers) load with the submodule
that needs them.
"""

__version__ = "0.1.0"
