"""The /ui dashboard rendered by a real browser (headless Chromium) over a real gateway + neuron.

The page is static; everything it shows comes from its own fetch of /cortex/status, so finding
the fleet's node and model names in the rendered DOM proves the page, the route and the status
API work together. Skips, saying why, where Chromium is not installed (make test installs it
where apt-get can).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MODELS = [
    {"id": "dash-model", "source": "tiny", "vram_gb": 0.3, "context_length": 1024},
    {"id": "dash-cold", "source": "tiny", "vram_gb": 0.3, "context_length": 1024},
    {"id": "dash-huge", "source": "tiny", "vram_gb": 1000.0},  # fits nowhere: a 503
]


@pytest.fixture(scope="module")
def gateway(
    start_neuron: Callable[..., NeuronProcess],
    model_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    neuron = start_neuron(name="dash-node", model_roots=[model_root], cpu_memory_budget_gb=1.0)
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw"), neurons={"dash-node": neuron}, models=MODELS
    )
    status, _ = gw.call("POST", "/cortex/models/dash-model/load")
    assert status == 200
    yield gw
    gw.stop()


def _chromium(*args: str) -> str:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=5000",
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return done.stdout


def test_ui_is_a_self_contained_page(gateway: GatewayProcess) -> None:
    with urllib.request.urlopen(gateway.url + "/ui", timeout=10) as resp:
        page = resp.read().decode()
        policy = resp.headers["content-security-policy"]
    assert resp.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in policy
    # No CDN, no external fonts or scripts: nothing but same-origin fetches.
    assert "http://" not in page and "https://" not in page
    assert 'fetch("/cortex/status"' in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_dashboard_renders_the_fleet_in_a_browser(gateway: GatewayProcess, tmp_path: Path) -> None:
    dom = _chromium(f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", gateway.url + "/ui")
    assert 'data-node="dash-node"' in dom, dom[-2000:]
    assert 'data-model="dash-model"' in dom
    assert 'data-model="dash-cold"' in dom
    # The resident model shows as such, the cold one as available, the node as up.
    assert ">resident<" in dom and ">available<" in dom and ">up<" in dom


def _row(dom: str, model: str) -> str:
    start = dom.index(f'data-model="{model}"')
    return dom[start : dom.index("</tr>", start)]


def _series(dom: str, chart: str) -> list[list[float | None]]:
    svg = re.search(rf'<svg id="{chart}".*?</svg>', dom, re.S)
    assert svg is not None, chart
    return [json.loads(html.unescape(v)) for v in re.findall(r'data-values="([^"]*)"', svg[0])]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_dashboard_charts_traffic_lists_errors_and_offers_only_possible_actions(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    for _ in range(3):
        stream = client.chat.completions.create(
            model="dash-model",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        assert sum(1 for _ in stream) > 0
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(
            model="dash-huge", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert refused.value.status_code >= 500
    dom = _chromium(f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", gateway.url + "/ui")
    [requests] = _series(dom, "chart-rps")
    [tokens] = _series(dom, "chart-tps")
    p50, p95 = _series(dom, "chart-ttft")
    [queue] = _series(dom, "chart-queue")
    assert requests and sum(v or 0 for v in requests) > 0, requests
    assert sum(v or 0 for v in tokens) > 0 and any(v is not None for v in p50 + p95)
    assert len(queue) == len(requests)
    errors = dom[dom.index('id="recent-errors"') :]
    assert "dash-huge" in errors[: errors.index("</tbody>")]
    resident, cold = _row(dom, "dash-model"), _row(dom, "dash-cold")
    assert re.search(r'data-action="load"[^>]*disabled', resident), resident
    assert not re.search(r'data-action="unload"[^>]*disabled', resident)
    assert re.search(r'data-action="unload"[^>]*disabled', cold), cold
    assert ">1,024<" in resident and ">none<" in resident  # context length, quantisation
