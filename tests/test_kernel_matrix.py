"""The Debian 6.1 leg of the kernel matrix, on every run of the suite.

This machine's kernel may lack sch_fq, so shape and delay would only ever be
skipped here; vm/run-matrix boots Debian's 6.1, which has it, under qemu and
runs a lean selection there (vm/README.md). Under TCG on two cores it takes
about 20 minutes, so it starts in the background when
collection ends (tests/kernel_matrix_leg.py, conftest.py) and this test, which
runs last, judges its report. Deselect it with -m "not vm".
"""

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import kernel_matrix_leg as leg

# Each at both hooks that mark flows for the egress pacer (test_e2e_shape's over_hooks).
MUST_PASS = {f"{test}[{hook}]" for test in ("test_shaped_download_keeps_to_the_rate_by_delaying_not_dropping",
                                           "test_delay_adds_its_latency_to_each_exchange")
             for hook in ("native", "tc")}
# The receiver model's decoy cases, every one (kernel_matrix_leg.SELECTION).
DECOY_CASES = "test_a_decoy_the_server_drops_does_not_name_the_flow["


pytestmark = [pytest.mark.vm, pytest.mark.skipif(leg.why_not() is not None, reason=str(leg.why_not()))]


def outcomes(junit: Path) -> dict[str, str]:
    """Each test case's name (with its parameters) and passed, failed or skipped."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        status = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
        result[case.get("name")] = status
    return result


def test_debian_6_1_leg_shapes_and_delays_with_fq_and_sees_through_decoys(request):
    returncode = leg.wait(request.config.kernel_matrix_leg)   # started by conftest.py
    tail = leg.output_tail()
    assert leg.JUNIT.exists(), f"no JUnit report from the 6.1 leg:\n{tail}"
    results = outcomes(leg.JUNIT)
    failed = sorted(name for name, status in results.items() if status == "failed")
    assert not failed, f"failed on 6.1: {failed} (vm/results/6.1.log)\n{tail}"
    not_passed = {name: results.get(name, "not run") for name in MUST_PASS if results.get(name) != "passed"}
    assert not not_passed, f"shaping was not tested on 6.1: {not_passed}"
    decoys = {name: status for name, status in results.items() if name.startswith(DECOY_CASES)}
    assert decoys and set(decoys.values()) == {"passed"}, f"decoys were not judged on 6.1: {decoys or 'none ran'}"
    assert returncode == 0, tail
