"""Example policies, installed with the package so that `sluice demo` finds the lab policy."""
