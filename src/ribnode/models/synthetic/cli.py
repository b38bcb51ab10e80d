"""Subcommands of this model package (registered by ribnode.models.cli)."""

from __future__ import annotations

import argparse


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register this package's subcommands on the ``ribnode`` parser."""
