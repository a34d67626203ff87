"""Prometheus metrics of the service, in their own registry, served on the metrics port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.allocator import mallinfo

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _MallocCollector(Collector):
    """dnirecon_malloc_bytes{kind}: one mallinfo2() call per scrape for all three kinds."""

    def collect(self):
        info = mallinfo()
        family = GaugeMetricFamily("dnirecon_malloc_bytes", "C heap by kind (glibc mallinfo2, read at scrape): "
                                   "in_use, free (kept in the arenas), mapped (own mappings)", labels=["kind"])
        for kind, value in (info or {}).items():
            family.add_metric([kind], value)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("dnirecon_requests", "RPCs started", ["rpc"], registry=r)
        self.slices = Counter("dnirecon_slices", "Slices by outcome: ok, error, dropped (cancelled or past deadline before compute)", ["outcome"], registry=r)
        self.errors = Counter("dnirecon_errors", "Errors by gRPC status code (per slice or per stream)", ["code"], registry=r)
        self.latency = Histogram(
            "dnirecon_slice_latency_seconds", "Last chunk received to result handed to gRPC", registry=r, buckets=_LATENCY_BUCKETS
        )
        self.queue_time = Histogram("dnirecon_queue_seconds", "Waiting for compute", registry=r, buckets=_LATENCY_BUCKETS)
        self.compute_time = Histogram("dnirecon_compute_seconds", "onnxruntime run per batch", registry=r, buckets=_LATENCY_BUCKETS)
        self.batch_size = Histogram("dnirecon_batch_size", "Slices per onnxruntime run", registry=r, buckets=(1, 2, 4, 8, 16, 32))
        self.queue_depth = Gauge("dnirecon_queue_depth", "Slices waiting for compute", registry=r)
        self.streams_active = Gauge("dnirecon_streams_active", "ReconstructStream calls open", registry=r)
        self.model_served = Gauge("dnirecon_model_served", "1 for the served model set", ["name", "version"], registry=r)
        self.alpha_served = Counter("dnirecon_alpha_served", "Slices answered per alpha used", ["alpha"], registry=r)
        self.providers = Gauge("dnirecon_providers", "1 per onnxruntime provider the sessions really got", ["provider"], registry=r)
        self.provider_fallback = Gauge(
            "dnirecon_provider_fallback", "1 when a requested provider (e.g. CUDA) is not in use", registry=r
        )
        self.calls_open = Gauge("dnirecon_reconstruct_calls_open", "ReconstructStream and Reconstruct calls and MRD sessions open "
                                "(at most max_streams; more are refused RESOURCE_EXHAUSTED)", registry=r)
        self.slice_memory_reserved = Gauge("dnirecon_slice_memory_reserved_bytes",
                                           "Zero-filled bytes reserved by the slices being assembled or computed", registry=r)
        self.slice_memory_budget = Gauge("dnirecon_slice_memory_budget_bytes", "slice_memory_bytes: the most they may reserve",
                                         registry=r)
        self.model_stale = Gauge("dnirecon_model_stale", "1 while the served set came from the cache because the registry "
                                 "could not be reached; 0 once the registry confirmed the alias", registry=r)
        self.model_swap_phase = Gauge("dnirecon_model_swap_phase_seconds", "Phases of the last alias move installed: poll "
                                      "(the wait since the registry's previous answer), resolve, download, verify, load, warmup",
                                      ["phase"], registry=r)
        self.model_loads = Counter("dnirecon_model_loads", "Model set loads", ["outcome"], registry=r)
        if mallinfo() is not None:
            r.register(_MallocCollector())

    def set_model(self, name: str, version: str, providers: list[str], fallback: bool) -> None:
        self.model_served.clear()
        self.model_served.labels(name=name, version=version).set(1)
        self.providers.clear()
        for p in providers:
            self.providers.labels(provider=p).set(1)
        self.provider_fallback.set(1 if fallback else 0)

    def serve(self, port: int, addr: str = "0.0.0.0"):
        """Starts the HTTP exporter; returns (server, thread) from prometheus_client."""
        return start_http_server(port, addr=addr, registry=self.registry)
