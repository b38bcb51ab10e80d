"""``ribnode demo``: the main job end to end on embedded defaults."""

from __future__ import annotations

import argparse


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``ribnode demo``."""
