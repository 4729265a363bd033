# SPDX-License-Identifier: GPL-2.0-only
"""Example policies, installed with the package so that `sluice demo` finds the lab policy."""

from importlib.resources import files

LAB_POLICY = "lab.yaml"


def lab_policy_path() -> str:
    """The example policy the lab applies, wherever sluice is installed."""
    return str(files(__name__).joinpath(LAB_POLICY))
