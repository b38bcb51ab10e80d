"""Subcommands of this part of the house (see ribnode.cli)."""

from __future__ import annotations

import argparse


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register this part's subcommands on the ``ribnode`` parser."""
