"""Prometheus metrics: counters and histograms observed as requests finish, gauges read at scrape time.

prometheus-client renders the text format; a registry per daemon keeps tests independent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .config import RESOLUTIONS
from .plainmetrics import PlainCollector, PlainCounter, PlainHistogram
from .priority import URGENT_FIRST

if TYPE_CHECKING:
    from .backends.supervisor import Supervisor
    from .gateway import Gateway
    from .gpu import GpuMonitor

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Queue waits and service times of LLM requests span milliseconds to minutes.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))
STATES = ("stopped", "starting", "running", "draining", "stopping", "backoff", "fatal")
VERDICTS = ("healthy", "degraded", "failed", "unavailable")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = PlainCounter("aigw_requests", "Requests by backend and outcome (completed, failed, "
                                     "timeout, cancelled, rejected_429, rejected_503, rejected_404)",
                                     ["backend", "outcome"])
        self.queue_wait = PlainHistogram("aigw_queue_wait_seconds", "Time from acceptance to the start of "
                                         "processing", ["backend", "priority"], BUCKETS)
        self.service_time = PlainHistogram("aigw_service_seconds", "Time from the start of processing to the end",
                                           ["backend"], BUCKETS)
        self.registry.register(PlainCollector(self.requests, self.queue_wait, self.service_time))
        self.batch_lines = Counter("aigw_batch_lines", "Batch lines by outcome (completed, failed, expired, "
                                   "cancelled)", ["outcome"], registry=self.registry)
        # Bounded: backends x 3 priorities x the few outcomes.
        self._children: dict[tuple[str, str, str], tuple[list[float], list[float], list[float]]] = {}
        self.usage = UsageCounters(self.registry)

    def bind(self, gateway: Gateway, supervisor: Supervisor | None, gpu: GpuMonitor | None) -> None:
        """Gauges of the live state, read when Prometheus scrapes."""
        self.registry.register(_StateCollector(gateway, supervisor, gpu))

    def finished(self, backend: str, priority: str, outcome: str, wait_s: float | None,
                 service_s: float | None) -> None:
        # The series of a combination, looked up once per combination.
        key = (backend, priority, outcome)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.series((backend, outcome)),
                                              self.queue_wait.series((backend, priority)),
                                              self.service_time.series((backend,)))
        children[0][0] += 1
        if wait_s is not None:
            self.queue_wait.observe(children[1], max(0.0, wait_s))
        if service_s is not None:
            self.service_time.observe(children[2], max(0.0, service_s))

    def batch_line(self, outcome: str) -> None:
        self.batch_lines.labels(outcome).inc()

    def rejected(self, backend: str, status: int) -> None:
        self.requests.series((backend or "-", f"rejected_{status}"))[0] += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)


class UsageCounters:
    """Usage by model and class (never by user or client: those are unbounded)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.prompt = PlainCounter("aigw_usage_prompt_tokens", "Prompt tokens of requests that reached a model "
                                   "server, as the server counted them", ["model", "class"])
        self.completion = PlainCounter("aigw_usage_completion_tokens", "Completion tokens of requests that "
                                       "reached a model server, as the server counted them", ["model", "class"])
        self.gpu = PlainCounter("aigw_usage_gpu_seconds", "Seconds requests held a model-server slot",
                                ["model", "class"])
        registry.register(PlainCollector(self.prompt, self.completion, self.gpu))
        # Bounded: served models x 3 classes.
        self._children: dict[tuple[str, str], tuple[list[float], list[float], list[float]]] = {}

    def count(self, model: str, priority: str, prompt: int, completion: int, gpu_s: float) -> None:
        key = (model, priority)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.prompt.series(key), self.completion.series(key),
                                              self.gpu.series(key))
        children[0][0] += prompt
        children[1][0] += completion
        if gpu_s > 0:
            children[2][0] += gpu_s


class _StateCollector(Collector):
    def __init__(self, gateway: Gateway, supervisor: Supervisor | None, gpu: GpuMonitor | None) -> None:
        self.gateway = gateway
        self.supervisor = supervisor
        self.gpu = gpu

    def collect(self) -> Iterator[Any]:
        waiting = GaugeMetricFamily("aigw_queue_waiting", "Requests waiting, by priority class",
                                    labels=["backend", "class"])
        processing = GaugeMetricFamily("aigw_queue_processing", "Requests processing", labels=["backend"])
        limit = GaugeMetricFamily("aigw_queue_max_concurrent", "Processing slots", labels=["backend"])
        oldest = GaugeMetricFamily("aigw_queue_oldest_wait_seconds", "Wait of the oldest waiting request",
                                   labels=["backend"])
        for name, rt in self.gateway.backends.items():
            stats = rt.stats()
            by_class = stats["waiting_by_class"]
            assert isinstance(by_class, dict)
            for cls in URGENT_FIRST:
                waiting.add_metric([name, cls.label], float(by_class.get(cls.label, 0)))
            processing.add_metric([name], float(stats["processing"]))  # type: ignore[arg-type]
            limit.add_metric([name], float(stats["max_concurrent"]))  # type: ignore[arg-type]
            oldest.add_metric([name], float(stats["oldest_wait_s"]))  # type: ignore[arg-type]
        yield from (waiting, processing, limit, oldest)
        yield from self._replicas(self.gateway)
        if self.supervisor is not None:
            yield from self._backends(self.supervisor)
        if self.gpu is not None:
            yield from self._gpus(self.gpu)

    @staticmethod
    def _replicas(gateway: Gateway) -> Iterator[Any]:
        """Per server of a model (those aigw runs and those it does not): label `replica`, its index.
        Indexes come from the config (replicas, gpus, external), so the series stay bounded."""
        in_flight = GaugeMetricFamily("aigw_replica_in_flight", "Requests processing on a server",
                                      labels=["backend", "replica"])
        ready = GaugeMetricFamily("aigw_replica_ready", "1 while a server takes work (healthy and not draining)",
                                  labels=["backend", "replica"])
        mode = GaugeMetricFamily("aigw_ocr_mode", "1 for the resolution mode an OCR server runs in",
                                 labels=["backend", "replica", "mode"])
        for name, service in gateway.backends.items():
            for r in service.replicas:
                label = [name, str(r.index)]
                in_flight.add_metric(label, float(r.in_flight))
                ready.add_metric(label, 1.0 if r.ready else 0.0)
                if service.cfg.kind == "ocr":
                    for m in RESOLUTIONS:
                        mode.add_metric([*label, m], 1.0 if r.mode == m else 0.0)
        yield from (in_flight, ready, mode)

    @staticmethod
    def _backends(supervisor: Supervisor) -> Iterator[Any]:
        """Per server aigw runs (label `replica`); the OCR switches of a model are counted per model."""
        state = GaugeMetricFamily("aigw_backend_state", "1 for the state a server is in",
                                  labels=["backend", "replica", "state"])
        restarts = CounterMetricFamily("aigw_backend_restarts", "Restarts after failures",
                                       labels=["backend", "replica"])
        crashes = CounterMetricFamily("aigw_backend_crashes", "Exits and hangs of a server (each one a crash "
                                      "record)", labels=["backend", "replica"])
        memory = GaugeMetricFamily("aigw_backend_gpu_memory_bytes", "GPU memory held by a server's processes",
                                   labels=["backend", "replica"])
        switches = CounterMetricFamily("aigw_ocr_mode_switches", "OCR resolution switches", labels=["backend"])
        for name, servers in supervisor.servers.items():
            for server in servers:
                label = [name, str(server.index)]
                for s in STATES:
                    state.add_metric([*label, s], 1.0 if server.state.value == s else 0.0)
                restarts.add_metric(label, float(server.restarts))
                crashes.add_metric(label, float(server.crashes))
                held = server.gpu_memory_bytes()
                if held is not None:
                    memory.add_metric(label, float(held))
            if supervisor.models[name].cfg.kind == "ocr":
                switches.add_metric([name], float(supervisor.switches.get(name, 0)))
        yield from (state, restarts, crashes, memory, switches)

    @staticmethod
    def _gpus(gpu: GpuMonitor) -> Iterator[Any]:
        available = GaugeMetricFamily("aigw_gpu_monitor_available", "1 when NVML answers")
        available.add_metric([], 1.0 if gpu.available else 0.0)
        yield available
        used = GaugeMetricFamily("aigw_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"])
        total = GaugeMetricFamily("aigw_gpu_memory_total_bytes", "GPU memory", labels=["gpu"])
        temp = GaugeMetricFamily("aigw_gpu_temperature_celsius", "GPU temperature", labels=["gpu"])
        util = GaugeMetricFamily("aigw_gpu_utilization_ratio", "GPU utilization, 0-1", labels=["gpu"])
        power = GaugeMetricFamily("aigw_gpu_power_watts", "GPU power draw", labels=["gpu"])
        verdict = GaugeMetricFamily("aigw_gpu_verdict", "1 for the health verdict of a GPU", labels=["gpu", "verdict"])
        for index in gpu.gpus():
            label = [str(index)]
            reading = gpu.reading(index)
            if reading is not None:
                used.add_metric(label, float(reading.memory_used))
                total.add_metric(label, float(reading.memory_total))
                if reading.temperature_c is not None:
                    temp.add_metric(label, float(reading.temperature_c))
                if reading.utilization_pct is not None:
                    util.add_metric(label, reading.utilization_pct / 100.0)
                if reading.power_w is not None:
                    power.add_metric(label, float(reading.power_w))
            state = gpu.verdict(index).state
            for v in VERDICTS:
                verdict.add_metric([str(index), v], 1.0 if state == v else 0.0)
        yield from (used, total, temp, util, power, verdict)
