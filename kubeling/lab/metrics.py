"""A few Prometheus figures of each lab component, for `lab status` (pure: text in, lines out).

Each component's /metrics text is parsed with prometheus_client.parser; histograms give
p50/p99 the way PromQL's histogram_quantile() estimates them (linear inside the bucket).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from prometheus_client.parser import text_string_to_metric_families

Samples = list[tuple[str, dict[str, str], float]]


def parse(text: str) -> Samples:
    """(name, labels, value) of every sample; ValueError when the text is not the exposition format."""
    return [(s.name, dict(s.labels), float(s.value)) for fam in text_string_to_metric_families(text)
            for s in fam.samples]


def total(samples: Samples, name: str, keep: Callable[[dict[str, str]], bool] = lambda _lb: True) -> float:
    return sum(v for n, lb, v in samples if n == name and keep(lb))


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for n, lb, v in samples:
        if n == name:
            out[lb.get(label, "")] = out.get(lb.get(label, ""), 0.0) + v
    return out


def quantile(q: float, samples: Samples, name: str,
             keep: Callable[[dict[str, str]], bool] = lambda _lb: True) -> float | None:
    """histogram_quantile(q, sum by (le) (name_bucket)); None without observations."""
    buckets: dict[float, float] = {}
    for n, lb, v in samples:
        if n == f"{name}_bucket" and keep(lb):
            le = float(lb["le"])
            buckets[le] = buckets.get(le, 0.0) + v
    return _quantile(q, sorted(buckets.items()))


def _quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    bs = list(buckets)
    if not bs or bs[-1][1] <= 0:
        return None
    count = bs[-1][1]
    rank = q * count
    lower, below = 0.0, 0.0
    for upper, cum in bs:
        if cum >= rank:
            if math.isinf(upper):
                return lower  # in the +Inf bucket: the highest finite bound, as Prometheus does
            if cum == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (cum - below)
        lower, below = upper, cum
    return lower


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _count(v: float) -> str:
    return f"{int(v):,}" if v == int(v) else f"{v:,.1f}"


def not_watch(lb: dict[str, str]) -> bool:
    return lb.get("verb", "").upper() not in ("WATCH", "CONNECT")


def summarize_apiserver(s: Samples) -> list[str]:
    """The apiserver, and the scheduler and controllers that `kubeling server` serves on the same /metrics."""
    codes = by_label(s, "apiserver_request_total", "code")
    errors = sum(v for c, v in codes.items() if c[:1] == "5")
    lines = [f"apiserver   requests {_count(sum(codes.values()))} (5xx {_count(errors)}), latency p50 "
             f"{ms(quantile(0.5, s, 'apiserver_request_duration_seconds', not_watch))} p99 "
             f"{ms(quantile(0.99, s, 'apiserver_request_duration_seconds', not_watch))} (not watches)"]
    attempts = by_label(s, "scheduler_schedule_attempts_total", "result")
    if attempts:
        lines.append("scheduler   schedule attempts " + ", ".join(f"{k} {_count(v)}" for k, v in sorted(attempts.items()))
                     + f"; pending {_count(total(s, 'scheduler_pending_pods'))}")
    adds = total(s, "workqueue_adds_total")
    if adds or any(n == "workqueue_depth" for n, _, _ in s):
        lines.append(f"controllers work queue adds {_count(adds)}, depth now {_count(total(s, 'workqueue_depth'))}, "
                     f"retries {_count(total(s, 'workqueue_retries_total'))}")
    return lines


def summarize_dns(s: Samples) -> list[str]:
    rcodes = by_label(s, "coredns_dns_responses_total", "rcode")
    return [f"dns         requests {_count(total(s, 'coredns_dns_requests_total'))} ("
            + (", ".join(f"{k} {_count(v)}" for k, v in sorted(rcodes.items())) or "none")
            + f"), latency p50 {ms(quantile(0.5, s, 'coredns_dns_request_duration_seconds'))} "
              f"p99 {ms(quantile(0.99, s, 'coredns_dns_request_duration_seconds'))}"]


def summarize_agent(node: str, s: Samples) -> list[str]:
    return [f"agent {node:<6}running pods {_count(total(s, 'kubelet_running_pods'))}, containers "
            f"{_count(total(s, 'kubelet_running_containers'))}, pod start p50 "
            f"{ms(quantile(0.5, s, 'kubelet_pod_start_sli_duration_seconds'))}, runtime calls "
            f"{_count(total(s, 'kubelet_runtime_operations_total'))} (errors "
            f"{_count(total(s, 'kubelet_runtime_operations_errors_total'))})"]


def summarize_proxy(node: str, s: Samples) -> list[str]:
    name = "kubeproxy_sync_proxy_rules_duration_seconds"
    return [f"proxy {node:<6}syncs {_count(total(s, name + '_count'))}, sync p50 {ms(quantile(0.5, s, name))} "
            f"p99 {ms(quantile(0.99, s, name))}, service ports {_count(total(s, 'kubeproxy_sync_proxy_rules_service_ports'))}"
            f", endpoints {_count(total(s, 'kubeproxy_sync_proxy_rules_endpoints'))}"]
