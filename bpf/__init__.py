# SPDX-License-Identifier: GPL-2.0-only
"""The data plane's C sources, installed as package data of the controller."""
