"""Throttling end to end: real TLS downloads and uploads through the policer on the lab's edge."""

import os
import threading

import pytest

from sluice.datapath import Datapath
from sluice.lab import Lab
from sluice.policy import load_policy

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and XDP need root")]

DOWN_BPS, UP_BPS, BURST = 4_000_000, 1_000_000, 128 * 1024
SECONDS = 3.0
POLICY = f"""\
version: 1
rules:
  - name: slow
    action: throttle
    down: {{rate: {DOWN_BPS}bit, burst: {BURST}B}}
    up: {{rate: {UP_BPS}bit, burst: {BURST}B}}
    domains: [slow.example]
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "throttle.yaml"
    path.write_text(POLICY)
    with Lab() as built:
        datapath = Datapath(load_policy(path))
        for ifname in (built.edge_client_iface, built.edge_server_iface):
            datapath.attach(ifname, netns=built.edge_ns)
        yield built
        datapath.close()


def ceiling(rate_bps: float, seconds: float = SECONDS) -> float:
    """The most goodput a policer of this rate and burst lets through in `seconds`, in bit/s."""
    return (rate_bps * seconds + BURST * 8) / seconds


def test_throttled_download_never_exceeds_rate_and_burst(lab):
    achieved = lab.download_rate("slow.example", seconds=SECONDS)
    assert achieved <= ceiling(DOWN_BPS)
    assert achieved >= DOWN_BPS / 3, "the flow is throttled, not stalled"


def test_upload_and_download_are_limited_independently(lab):
    upload_bytes = int(UP_BPS / 8 * SECONDS)
    upload = lab.upload_rate("slow.example", nbytes=upload_bytes)
    download = lab.download_rate("slow.example", seconds=SECONDS)
    # A fixed-size upload ends sooner than SECONDS, thanks to the burst: judge
    # it over the time it really took.
    upload_seconds = upload_bytes * 8 / upload
    assert UP_BPS / 3 <= upload <= ceiling(UP_BPS, upload_seconds)
    assert download <= ceiling(DOWN_BPS)
    assert download > ceiling(UP_BPS), "the download is not held to the upload's rate"


def test_unthrottled_download_in_parallel_is_not_throttled(lab):
    rates = {}

    def throttled():
        rates["slow"] = lab.download_rate("slow.example", seconds=SECONDS)
    worker = threading.Thread(target=throttled)
    worker.start()
    rates["open"] = lab.download_rate("open.example", seconds=1.0)
    worker.join()
    assert rates["slow"] <= ceiling(DOWN_BPS)
    assert rates["open"] > 10 * DOWN_BPS
