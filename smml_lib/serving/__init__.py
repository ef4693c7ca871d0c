"""serving: an OpenAI-compatible inference server with batching, and the load generator that measures it.

- ``config``: ``ServerConfig`` and ``BatchingConfig``: what a server is told at start, defined once;
- ``server``: the service (requests -> sequences -> text), admission checks, streaming and the drain;
- ``app``: the FastAPI app in front of it (routes, body limit, OpenAI-shaped errors) and its uvicorn server;
- ``api``: the request schemas (completions, chat) and OpenAI-shaped errors;
- ``text``: token ids -> text deltas, with stop strings held back so streaming never leaks them;
- ``metrics``: Prometheus metrics (``GET /metrics``) and reading a scrape back (deltas, quantiles);
- ``process``: run the server in a subprocess or a thread (``start_server``), and ``smml serve``;
- ``schedulers``: static and continuous batching, each in the model's own thread;
- ``kvbatch``: a batch of sequences sharing one padded KV cache: prefill, decode step, merge, retire;
- ``limits``: what limits a server, predicted (KV memory, the compute-bound batch) and measured;
- ``loadgen``: concurrent clients against any OpenAI-compatible server, with TTFT and tokens/s.

May import: common, perf, models.
"""
