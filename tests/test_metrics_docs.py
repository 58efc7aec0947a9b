"""docs/metrics.md documents every metric both roles export, and the dashboard uses only those."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from cortex.gateway.metrics import GatewayMetrics
from cortex.neuron.metrics import NeuronMetrics

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED = set(re.findall(r"`(cortex_[a-z_]+)`", (ROOT / "docs/metrics.md").read_text()))
FLEET_AND_MANAGER = {  # read at scrape time from a live fleet or manager
    "cortex_neuron_up",
    "cortex_gpu_memory_bytes",
    "cortex_model_resident",
    "cortex_requests_in_flight",
    "cortex_requests_queued",
}


def _exported(exposition: bytes) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(exposition.decode()):
        suffix = "_total" if family.type == "counter" else ""
        names.add(family.name + suffix)
    return names


def test_every_exported_metric_is_documented() -> None:
    exported = _exported(GatewayMetrics().exposition()) | _exported(NeuronMetrics().exposition())
    exported |= FLEET_AND_MANAGER
    assert exported <= DOCUMENTED, exported - DOCUMENTED


def test_dashboard_queries_only_documented_metrics() -> None:
    dashboard = json.loads((ROOT / "conf/grafana-cortex.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {
        re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"cortex_\w+", e)
    }
    assert used and used <= DOCUMENTED, used - DOCUMENTED
