"""A fleet of edge boxes: the Kubernetes manifests, the fleet's rules and dashboard, and the image.

The manifests are rendered with kustomize and validated against the OpenAPI
schemas of a current Kubernetes release (kubernetes-validate ships them); the
rules run under promtool's rule unit tests; the image is built with podman and
its entrypoint run, as a container runtime would run it, in a chroot inside
the lab's edge namespace. No cluster runs here: docs/fleet.md says what that
leaves unproven.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from helpers import free_port
from sluice.lab import Lab
from sluice.policy import load_policy
from test_deploy import CAPABILITY_BITS, capability_mask, unit_settings
from test_faults import atomic_write

REPO = Path(__file__).resolve().parent.parent
KUBERNETES = REPO / "deploy" / "kubernetes"
RULE_FILE = REPO / "deploy" / "sluice-alerts.yml"
KUBERNETES_VERSION = "1.37.0"
# Custom resources of the Prometheus Operator: no schema ships for them.
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}

needs_kustomize = pytest.mark.skipif(shutil.which("kustomize") is None,
                                     reason="kustomize is not installed (setup.sh installs it)")


def render(directory: str) -> list[dict]:
    result = subprocess.run(["kustomize", "build", str(KUBERNETES / directory)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [resource for resource in yaml.safe_load_all(result.stdout) if resource]


def one(resources: list[dict], kind: str, name: str) -> dict:
    [resource] = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return resource


def pod_spec(daemonset: dict) -> dict:
    return daemonset["spec"]["template"]["spec"]


def mounted_config_map(daemonset: dict, mount_path: str) -> str:
    [container] = pod_spec(daemonset)["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == mount_path]
    assert "subPath" not in mount, "a subPath mount never sees the kubelet's updates"
    [volume] = [v for v in pod_spec(daemonset)["volumes"] if v["name"] == mount["name"]]
    return volume["configMap"]["name"]


@needs_kustomize
@pytest.mark.parametrize("directory", ["base", "overlays/canary"])
def test_every_manifest_matches_the_kubernetes_schemas(directory):
    unvalidated = set()
    for resource in render(directory):
        if resource["kind"] in OPERATOR_KINDS:
            unvalidated.add(resource["kind"])
            continue
        # strict: a misspelt field is an error, not an ignored extra.
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    assert unvalidated == OPERATOR_KINDS


@needs_kustomize
def test_the_schema_check_catches_a_misspelt_field():
    daemonset = one(render("base"), "DaemonSet", "sluice")
    pod_spec(daemonset)["hostNetwrok"] = pod_spec(daemonset).pop("hostNetwork")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSION, strict=True)


@needs_kustomize
def test_the_daemonset_runs_sluice_as_the_unit_does():
    daemonset = one(render("base"), "DaemonSet", "sluice")
    spec = pod_spec(daemonset)
    [container] = spec["containers"]
    assert spec["hostNetwork"] is True
    assert spec["nodeSelector"]["sluice/edge"] == "true"
    context = container["securityContext"]
    assert context["capabilities"]["drop"] == ["ALL"]
    unit_capabilities = set(unit_settings()["CapabilityBoundingSet"].split())
    assert {"CAP_" + name for name in context["capabilities"]["add"]} == unit_capabilities
    assert context["privileged"] is False and context["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for path, host_path, read_only in [("/sys/fs/bpf", "/sys/fs/bpf", False), ("/sys", "/sys", True),
                                       ("/lib/modules", "/lib/modules", True), ("/usr/src", "/usr/src", True),
                                       ("/run/sluice", "/run/sluice", False)]:
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == host_path
        assert mounts[path].get("readOnly", False) is read_only, path
    assert mounted_config_map(daemonset, "/etc/sluice/policy") == "sluice-policy"
    assert mounted_config_map(daemonset, "/etc/sluice/interfaces") == "sluice-interfaces"
    assert "--policy=/etc/sluice/policy/policy.yaml" in container["args"]
    # The probes, the port, the scrape annotations and the exporter agree on one port.
    [port] = container["ports"]
    assert f"--metrics-port={port['containerPort']}" in container["args"]
    assert daemonset["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(
        port["containerPort"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": port["name"]}


@needs_kustomize
def test_the_canary_overlay_splits_the_edge_nodes_between_two_policies():
    resources = render("overlays/canary")
    stable, canary = one(resources, "DaemonSet", "sluice"), one(resources, "DaemonSet", "sluice-canary")
    for daemonset, operator, policy in [(stable, "NotIn", "sluice-policy"), (canary, "In", "sluice-policy-canary")]:
        [term] = pod_spec(daemonset)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"]
        assert term["matchExpressions"] == [{"key": "sluice/canary", "operator": operator, "values": ["true"]}]
        assert pod_spec(daemonset)["nodeSelector"]["sluice/edge"] == "true"
        assert mounted_config_map(daemonset, "/etc/sluice/policy") == policy
        assert daemonset["spec"]["selector"]["matchLabels"].items() <= daemonset["spec"]["template"]["metadata"][
            "labels"].items()
    # Disjoint selectors: neither DaemonSet claims the other's pods.
    assert stable["spec"]["selector"]["matchLabels"]["sluice/track"] == "stable"
    assert canary["spec"]["selector"]["matchLabels"]["sluice/track"] == "canary"
    assert render("base") == [r for r in resources if r["metadata"]["name"] not in (
        "sluice-canary", "sluice-policy-canary")], "the overlay leaves the base as it is"


@needs_kustomize
@pytest.mark.parametrize("directory,config_map", [("base", "sluice-policy"),
                                                  ("overlays/canary", "sluice-policy-canary")])
def test_the_config_maps_hold_policies_sluice_loads(tmp_path, directory, config_map):
    resources = render(directory)
    policy = tmp_path / "policy.yaml"
    policy.write_text(one(resources, "ConfigMap", config_map)["data"]["policy.yaml"])
    assert load_policy(policy).rules
    interfaces = one(resources, "ConfigMap", "sluice-interfaces")["data"]
    assert interfaces["default"].split()


@needs_kustomize
def test_the_prometheus_rule_is_the_rule_file():
    subprocess.run([sys.executable, str(KUBERNETES / "sync-rules.py"), "--check"], check=True, timeout=60)
    rule = one(render("base"), "PrometheusRule", "sluice")
    assert rule["spec"] == yaml.safe_load(RULE_FILE.read_text())


@needs_kustomize
def test_the_pod_monitor_scrapes_the_daemonsets_pods():
    resources = render("overlays/canary")
    monitor = one(resources, "PodMonitor", "sluice")
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert targets["instance"] == ["__meta_kubernetes_pod_node_name"]
    assert targets["track"] == ["__meta_kubernetes_pod_label_sluice_track"]
    for name in ("sluice", "sluice-canary"):
        template = one(resources, "DaemonSet", name)["spec"]["template"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        assert endpoint["port"] in [p["name"] for p in template["spec"]["containers"][0]["ports"]]
        # The job the alerts name comes from the pod label jobLabel names.
        assert template["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "sluice"
    assert 'up{job="sluice"}' in RULE_FILE.read_text()


def promtool_test(tmp_path, tests: list[dict]):
    """Run promtool's rule unit tests on deploy/sluice-alerts.yml."""
    spec = tmp_path / "fleet_test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(RULE_FILE)], "evaluation_interval": "1m",
                                    "tests": tests}))
    return subprocess.run(["promtool", "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)


def policy_info(instance: str, sha256: str, values: str, track: str = "stable") -> dict:
    return {"series": f'sluice_policy_info{{job="sluice", instance="{instance}", track="{track}", '
                      f'path="/etc/sluice/policy/policy.yaml", sha256="{sha256}"}}',
            "values": values}


DIFFERS = {"alertname": "SluicePolicyDigestDiffers"}


def test_a_box_left_on_another_policy_raises_an_alert_naming_it(tmp_path):
    result = promtool_test(tmp_path, [{
        "interval": "1m",
        "input_series": [
            policy_info("edge-1", "aaaa", "1x40"), policy_info("edge-2", "aaaa", "1x40"),
            policy_info("edge-3", "bbbb", "1x40"),
            # A canary on its own policy is not a disagreement.
            policy_info("edge-9", "cccc", "1x40", track="canary"),
        ],
        "promql_expr_test": [{"expr": "sluice:policy_digests:count", "eval_time": "5m",
                              "exp_samples": [{"labels": "sluice:policy_digests:count", "value": 2}]}],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "SluicePolicyDigestDiffers", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "SluicePolicyDigestDiffers", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "job": "sluice", "instance": "edge-3", "track": "stable",
                               "path": "/etc/sluice/policy/policy.yaml", "sha256": "bbbb"},
                "exp_annotations": {
                    "summary": "sluice on edge-3 runs policy bbbb, not the fleet's",
                    "description": yaml.safe_load(RULE_FILE.read_text())["groups"][1]["rules"][-1]["annotations"][
                        "description"]}}]},
        ],
    }])
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_rollout_that_completes_in_minutes_raises_no_alert(tmp_path):
    # Three boxes move from aaaa to bbbb over six minutes, as the kubelet's
    # ConfigMap updates reach the nodes one by one. A scrape that no longer
    # finds a series marks it stale, as Prometheus does.
    def moving(instance: str, minute: int) -> list[dict]:
        return [policy_info(instance, "aaaa", f"1x{minute - 1} stale"),
                policy_info(instance, "bbbb", f"_x{minute} 1x{40 - minute}")]
    result = promtool_test(tmp_path, [{
        "interval": "1m",
        "input_series": moving("edge-1", 2) + moving("edge-2", 5) + moving("edge-3", 8),
        "alert_rule_test": [{"eval_time": f"{minute}m", "alertname": "SluicePolicyDigestDiffers", "exp_alerts": []}
                            for minute in (4, 10, 20, 30)],
    }])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_has_a_node_variable_and_a_fleet_overview(tmp_path):
    dashboard = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    [node] = [v for v in dashboard["templating"]["list"] if v["name"] == "node"]
    assert node["query"]["query"] == "label_values(sluice_policy_info, instance)"
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert [row["title"] for row in rows] == ["Fleet overview (every box)", "Per box ($node)"]
    fleet = [p for p in dashboard["panels"] if rows[0]["gridPos"]["y"] < p["gridPos"]["y"] < rows[1]["gridPos"]["y"]]
    per_box = [p for p in dashboard["panels"] if p["gridPos"]["y"] > rows[1]["gridPos"]["y"]]
    fleet_exprs = [t["expr"] for p in fleet for t in p["targets"]]
    assert "count by (sha256) (sluice_policy_info)" in fleet_exprs
    assert any("sum by (instance)" in e and 'result="failure"' in e for e in fleet_exprs)
    assert any(e.startswith("sum by (rule") and "sluice_rule_flows_total" in e for e in fleet_exprs)
    assert any(e.startswith("sum by (rule") and "sluice_rule_dropped_packets_total" in e for e in fleet_exprs)
    # Every series a per-box panel reads follows the node variable.
    for panel in per_box:
        for target in panel["targets"]:
            for selector in re.findall(r"\bsluice_[a-z_]+(\{[^}]*\})?", target["expr"]):
                assert 'instance=~"$node"' in selector, (panel["title"], target["expr"])
    # promtool parses every expression, as recording rules, with the variable filled in.
    exprs = [t["expr"].replace("$node", ".*") for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = tmp_path / "dashboard_rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{n}", "expr": e} for n, e in enumerate(exprs)]}]}))
    result = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_federation_example_is_a_valid_prometheus_config(tmp_path):
    docs = (REPO / "docs" / "fleet.md").read_text()
    [block] = re.findall(r"```yaml\n(# central-prometheus.yml\n.*?)```", docs, re.DOTALL)
    config = tmp_path / "central-prometheus.yml"
    config.write_text(block)
    result = subprocess.run(["promtool", "check", "config", "--syntax-only", str(config)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    [job] = yaml.safe_load(block)["scrape_configs"]
    assert job["metrics_path"] == "/federate" and job["honor_labels"] is True
    assert '{__name__=~"sluice:.*"}' in job["params"]["match[]"]


@pytest.mark.parametrize("setting", [None, "  \n"])
def test_the_entrypoint_refuses_a_node_without_interfaces(tmp_path, setting):
    """Without --iface `sluice run` would build the namespace lab: no interface
    setting for the node, or an empty one, is one line and exit 2."""
    if setting is not None:
        (tmp_path / "default").write_text(setting)
    result = subprocess.run(["sh", str(REPO / "deploy" / "container" / "entrypoint.sh"), "--policy=/nonexistent"],
                            env={"PATH": os.environ["PATH"], "NODE_NAME": "edge-1",
                                 "SLUICE_INTERFACES_DIR": str(tmp_path)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    [refusal] = [line for line in result.stderr.splitlines() if "interface" in line]
    assert str(tmp_path) in refusal


# The image: built once per module (podman's layer cache and build.sh's base
# cache make a rebuild quick), its entrypoint run in a chroot.

@pytest.fixture(scope="module")
def image_root():
    if shutil.which("podman") is None or shutil.which("debootstrap") is None:
        pytest.skip("podman and debootstrap are not installed (setup.sh installs them)")
    tag = f"localhost/sluice-test:{os.getpid()}"
    build = subprocess.run([str(REPO / "deploy" / "container" / "build.sh"), tag], capture_output=True, text=True,
                           timeout=1800)
    assert build.returncode == 0, build.stderr[-4000:]
    config = json.loads(subprocess.run(["podman", "image", "inspect", tag], capture_output=True, text=True,
                                       check=True).stdout)[0]["Config"]
    root = subprocess.run(["podman", "image", "mount", tag], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        yield Path(root), config
    finally:
        subprocess.run(["podman", "image", "unmount", tag], capture_output=True)
        subprocess.run(["podman", "image", "rm", tag], capture_output=True)


@pytest.mark.container
@pytest.mark.skipif(os.geteuid() != 0, reason="podman image mount needs root")
def test_the_image_holds_sluice_bcc_and_the_fallback_headers(image_root):
    root, config = image_root
    assert config["Entrypoint"] == ["/usr/local/bin/sluice-entrypoint"]
    assert (root / "opt/sluice/venv/bin/sluice").exists()
    assert (root / "opt/sluice/kernel-headers/include/linux/kconfig.h").exists()
    assert (root / "opt/sluice/kernel-headers/include/generated/autoconf.h").exists()
    assert list((root / "usr/lib/python3/dist-packages/bcc").glob("__init__.py"))
    assert not list((root / "usr/src").glob("linux-headers-*")), "the node's /usr/src is mounted there"


POLICY = "version: 1\nrules:\n  - {{name: blocker, action: block, domains: [{domains}]}}\n"


def policy_digest(metrics: str) -> str:
    return re.search(r'^sluice_policy_info\{.*sha256="([0-9a-f]+)"', metrics, re.MULTILINE).group(1)


CHROOT = """\
set -e
root=$1 headers=$2 work=$3
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
# A bpffs of its own: this run's pins never meet those of other tests.
mount -t bpf bpf "$root/sys/fs/bpf"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
mkdir "$root/run/sluice"
mount --bind "$work" "$root/tmp"
if [ "$headers" = node ]; then
    for dir in /lib/modules /usr/src; do
        mount --bind "$dir" "$root$dir"
        mount -o remount,bind,ro "$root$dir"
    done
fi
shift 3
exec chroot "$root" "$@"
"""


@pytest.mark.container
@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0, reason="chroot, namespaces and XDP need root")
@pytest.mark.parametrize("headers", ["node", "image"])
def test_the_entrypoint_enforces_in_a_chroot_in_the_edge_namespace(image_root, tmp_path, headers):
    """The image's entrypoint, run as a runtime runs it: its Env, its Entrypoint,
    the DaemonSet's mounts (node headers read-only, or none: the image's
    fallback), only the unit's capabilities, and the interfaces from the
    per-node setting. It attaches, blocks, serves metrics, reloads once when
    the kubelet swaps the ConfigMap's ..data symlink, and detaches on SIGTERM."""
    root, config = image_root
    names = unit_settings()["CapabilityBoundingSet"].split()
    setpriv_caps = ",".join(["-all"] + ["+" + name.removeprefix("CAP_").lower() for name in names])
    expected_caps = sum(1 << CAPABILITY_BITS[name] for name in names) & capability_mask("CapBnd:")
    # The policy directory as the kubelet lays out a ConfigMap volume.
    (tmp_path / "policy").mkdir()
    atomic_write(tmp_path / "policy", "policy.yaml", POLICY.format(domains="blocked.example"), 1)
    port = free_port()
    env = dict(item.split("=", 1) for item in config["Env"])
    env.update(NODE_NAME="edge-test", SLUICE_INTERFACES_DIR="/tmp/interfaces")
    with Lab() as lab:
        (tmp_path / "interfaces").mkdir()
        (tmp_path / "interfaces" / "edge-test").write_text(f"{lab.edge_client_iface}\n{lab.edge_server_iface}\n")
        (tmp_path / "interfaces" / "default").write_text("no-such-interface\n")
        controller = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{lab.edge_ns}", "unshare", "--mount", "--propagation", "private",
             "sh", "-c", CHROOT, "chroot", str(root), headers, str(tmp_path),
             "/usr/bin/setpriv", "--bounding-set", setpriv_caps, "--inh-caps", "-all", "--",
             *config["Entrypoint"], "--policy=/tmp/policy/policy.yaml", f"--metrics-port={port}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            def metrics() -> str:
                return lab.run_in(lab.edge_ns, ["curl", "-s", f"http://127.0.0.1:{port}/metrics"]).stdout

            def wait_for(text: str, seconds: float, what: str) -> None:
                deadline = time.monotonic() + seconds
                while text not in metrics():
                    if controller.poll() is not None or time.monotonic() > deadline:
                        controller.terminate()
                        raise AssertionError(f"{what}: {controller.communicate(timeout=30)[1]}")
                    time.sleep(0.3)

            wait_for("sluice_policy_loaded_timestamp_seconds", 120, "the entrypoint never served metrics")
            # exec all the way down: the process the runtime started is the controller.
            cmdline = Path(f"/proc/{controller.pid}/cmdline").read_bytes().split(b"\0")
            assert b"run" in cmdline and b"--iface" in cmdline, cmdline
            assert capability_mask("CapEff:", controller.pid) == expected_caps
            assert not lab.curl("blocked.example", timeout=1).ok
            assert lab.curl("open.example", timeout=2).ok
            blocked = re.search(r'^sluice_rule_flows_total\{action="block",mode="enforce",rule="blocker"\} (\S+)$',
                                metrics(), re.MULTILINE)
            assert blocked and float(blocked.group(1)) >= 1, metrics()
            digest = policy_digest(metrics())
            atomic_write(tmp_path / "policy", "policy.yaml",
                         POLICY.format(domains="blocked.example, newly.example"), 2)
            wait_for('sluice_policy_reloads_total{result="success"} 1.0', 90, "the ConfigMap swap was not reloaded")
            assert not lab.curl("newly.example", timeout=1).ok
            assert policy_digest(metrics()) != digest
            time.sleep(3)
            assert 'sluice_policy_reloads_total{result="success"} 1.0' in metrics(), "one reload per change"
            controller.send_signal(signal.SIGTERM)
            assert controller.wait(timeout=30) == 0
            stderr = controller.stderr.read()
            source = "kernel headers of the node" if headers == "node" else "using the image's"
            assert source in stderr, stderr
            assert lab.curl("blocked.example", timeout=2).ok, "stopping detaches"
        finally:
            if controller.poll() is None:
                controller.kill()
                controller.wait()
