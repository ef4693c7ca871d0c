"""The server's own view of its load, as Prometheus metrics (``GET /metrics``), and how a lab reads them back.

A load generator sees latency from outside; a server can say what happened inside: how many sequences ran
and waited, how many requests it refused, how long the first token took *from the moment the request
arrived*. Production servers (vLLM, TGI) export these through ``prometheus_client``; so does this one:

- ``smml_requests_total{model, endpoint, outcome}``: answered requests by outcome (``ok``, ``client_error``,
  ``rejected`` (429), ``aborted`` (shutdown), ``disconnected``, ``server_error``); a request refused before
  its body names a served model (bad JSON, an unknown model, 413) counts under ``model="unknown"``;
- ``smml_queue_rejections_total{model}``: sequences refused because the queue was full;
- ``smml_prompt_tokens_total`` / ``smml_generation_tokens_total``: tokens read and written;
- ``smml_time_to_first_token_seconds``, ``smml_inter_token_latency_seconds``, ``smml_e2e_request_latency_seconds``:
  histograms (buckets 10% apart, so a quantile read from them is within a few percent);
- ``smml_num_sequences_running`` / ``_waiting`` and ``smml_batch_slots_used`` / ``_max``: read live from the
  schedulers at every scrape.

Each server has its own ``CollectorRegistry`` (tests run several in one process). ``scrape`` reads the
text format back; ``delta`` subtracts two scrapes (a load level's own figures) and ``histogram_quantile``
estimates a quantile from bucket counts, as Prometheus's function of the same name does.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = tuple(float(f"{b:.4g}") for b in np.geomspace(1e-3, 120.0, 124))  # about 10% apart


class ServerMetrics:
    """The metrics of one server. ``stats`` returns ``{model: scheduler.stats()}`` for the live gauges."""

    def __init__(self, stats: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self.registry = CollectorRegistry()
        self._stats = stats
        reg = self.registry
        self.requests = Counter("smml_requests", "Answered requests by outcome", ["model", "endpoint", "outcome"],
                                registry=reg)
        self.rejections = Counter("smml_queue_rejections", "Sequences refused with 429 (queue full)", ["model"],
                                  registry=reg)
        self.prompt_tokens = Counter("smml_prompt_tokens", "Prompt tokens of accepted requests", ["model"],
                                     registry=reg)
        self.generation_tokens = Counter("smml_generation_tokens", "Generated tokens delivered to requests",
                                         ["model"], registry=reg)
        self.ttft = Histogram("smml_time_to_first_token_seconds",
                              "Request arrival to its first token (streamed: to its first chunk sent)", ["model"],
                              buckets=LATENCY_BUCKETS_S, registry=reg)
        self.itl = Histogram("smml_inter_token_latency_seconds", "Time between two tokens of one sequence",
                             ["model"], buckets=LATENCY_BUCKETS_S, registry=reg)
        self.e2e = Histogram("smml_e2e_request_latency_seconds", "Request arrival to its last token", ["model"],
                             buckets=LATENCY_BUCKETS_S, registry=reg)
        reg.register(self)  # collect() below: the gauges read from the schedulers at scrape time

    def collect(self) -> Any:
        """Live gauges (prometheus_client's custom-collector protocol)."""
        gauges = {"smml_num_sequences_running": ("Sequences in the decode batch", "running"),
                  "smml_num_sequences_waiting": ("Sequences waiting for a slot", "waiting"),
                  "smml_batch_slots_used": ("Batch slots in use", "running"),
                  "smml_batch_slots_max": ("Batch slots (max_batch)", "max_batch")}
        stats = self._stats()
        for name, (doc, key) in gauges.items():
            family = GaugeMetricFamily(name, doc, labels=["model"])
            for model, s in stats.items():
                family.add_metric([model], float(s[key]))
            yield family

    def describe(self) -> list:
        return []  # no fixed description: the gauges are produced at every scrape

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> ``{(sample name, sorted labels): value}``."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def scrape(base_url: str, timeout_s: float = 10.0) -> dict:
    """``GET /metrics`` of a server (``base_url`` with or without ``/v1``), parsed with ``parse``."""
    import httpx  # deferred: optional extra [serve]

    root = base_url[:-3] if base_url.endswith("/v1") else base_url
    return parse(httpx.get(root + "/metrics", timeout=timeout_s).text)


def delta(before: dict, after: dict) -> dict:
    """What happened between two scrapes (counters and histogram buckets; gauges are the ``after`` value)."""
    return {k: v - before.get(k, 0.0) if k[0].endswith(("_total", "_bucket", "_count", "_sum")) else v
            for k, v in after.items()}


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for (n, lab), v in samples.items() if n == name and set(labels.items()) <= set(lab))


def histogram_quantile(samples: dict, name: str, q: float, **labels: str) -> float:
    """The ``q`` quantile of histogram ``name`` from its cumulative buckets, interpolating inside a bucket."""
    buckets: dict[float, float] = {}
    for (n, lab), v in samples.items():
        d = dict(lab)
        if n == name + "_bucket" and all(d.get(k) == x for k, x in labels.items()):
            le = float(d["le"])
            buckets[le] = buckets.get(le, 0.0) + v
    edges = sorted(buckets)
    count = buckets.get(float("inf"), 0.0)
    if not edges or count <= 0:
        return float("nan")
    rank, lower, below = q * count, 0.0, 0.0
    for le in edges:
        if buckets[le] >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(buckets[le] - below, 1e-12)
        lower, below = le, buckets[le]
    return lower


def compare_views(samples: dict, requests: Any, model: str) -> Any:
    """The server's view of a load level (a ``delta`` of two scrapes) beside the load generator's per-request frame.

    One row per figure: requests answered 200, prompt and generated tokens (must be equal), TTFT p50 (the
    server measures from the request's arrival, the client from sending it: they should agree within 10%).
    The server's TTFT counts every answered request, so this compares streamed levels (the client sees TTFT
    only when streaming).
    """
    import pandas as pd  # deferred: only the lab's comparison needs a table

    ok = requests[requests["ok"]]
    server_ttft = histogram_quantile(samples, "smml_time_to_first_token_seconds", 0.5, model=model)
    rows = [("requests answered 200", total(samples, "smml_requests_total", model=model, outcome="ok"), len(ok)),
            ("prompt tokens", total(samples, "smml_prompt_tokens_total", model=model), ok["prompt_tokens"].sum()),
            ("generated tokens", total(samples, "smml_generation_tokens_total", model=model),
             ok["output_tokens"].sum()),
            ("TTFT p50 (ms)", 1e3 * server_ttft, 1e3 * float(ok["ttft_s"].median()))]
    df = pd.DataFrame(rows, columns=["figure", "server (/metrics)", "load generator"])
    df["server / client"] = df["server (/metrics)"] / df["load generator"]
    return df
