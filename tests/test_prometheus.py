"""A real Prometheus (Debian's) scrapes a real `sluice run`, and PromQL sees the lab's traffic."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from helpers import free_port
from sluice.lab import Lab
from sluice.policies import lab_policy_path

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and XDP need root")]

REPO = Path(__file__).resolve().parent.parent
EXPORTER_PORT, PROMETHEUS_PORT = free_port(), free_port()


def test_deployment_files_are_valid():
    subprocess.run(["promtool", "check", "rules", str(REPO / "deploy" / "sluice-alerts.yml")], check=True,
                   capture_output=True)
    subprocess.run(["promtool", "check", "config", "--syntax-only", str(REPO / "deploy" / "prometheus.yml")],
                   check=True, capture_output=True)
    dashboard = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    graphs = [panel for panel in dashboard["panels"] if panel["type"] != "row"]   # a row only groups
    assert graphs and all(panel["targets"] for panel in graphs)
    assert all(target["expr"] for panel in graphs for target in panel["targets"])


def query(expr: str) -> float | None:
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    result = json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_promql_sees_the_counters_of_real_traffic(tmp_path):
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global: {{scrape_interval: 1s}}\nrule_files: [{REPO / 'deploy' / 'sluice-alerts.yml'}]\n"
                      f"scrape_configs:\n  - job_name: sluice\n    static_configs:\n"
                      f"      - targets: ['127.0.0.1:{EXPORTER_PORT}']\n")
    with Lab() as lab:
        controller = subprocess.Popen(
            [sys.executable, "-m", "sluice", "run", "--policy", lab_policy_path(), "--netns", lab.edge_ns,
             "--iface", "cli0", "--iface", "srv0", "--metrics-port", str(EXPORTER_PORT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # The exporter serves once the data plane is compiled and attached.
            deadline = time.monotonic() + 60
            while True:
                assert controller.poll() is None and time.monotonic() < deadline, "the controller never started"
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{EXPORTER_PORT}/metrics", timeout=2)
                    break
                except OSError:
                    time.sleep(0.2)
            for _ in range(3):
                assert not lab.curl("blocked.example", timeout=1).ok
            assert lab.curl("allowed.example", timeout=2).ok
            expected = {'sum(sluice_rule_flows_total{rule="block-lab"})': 3.0,
                        'sum(sluice_rule_flows_total{rule="allow-lab"})': 1.0,
                        'up{job="sluice"}': 1.0}
            deadline = time.monotonic() + 60
            while True:
                try:
                    seen = {expr: query(expr) for expr in expected}
                except OSError:
                    seen = {}
                if seen == expected or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert seen == expected
            assert query('sum(sluice_rule_dropped_packets_total{rule="block-lab"})') >= 3
            assert query("sluice_flow_table_capacity") == 262144
        finally:
            prometheus.send_signal(signal.SIGTERM)
            prometheus.wait(timeout=30)
            controller.send_signal(signal.SIGTERM)
            controller.wait(timeout=30)
    shutil.rmtree(tmp_path / "data", ignore_errors=True)
