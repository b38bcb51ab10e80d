"""Subcommands of ribnode.models: each model package registers its own (see ribnode.cli)."""

from __future__ import annotations

import argparse


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register the models' subcommands (train, eval, infer, synth) on the ``ribnode`` parser."""
    from ribnode.models.segmentation import cli as segmentation_cli
    from ribnode.models.suppression import cli as suppression_cli
    from ribnode.models.synthetic import cli as synthetic_cli

    synthetic_cli.add_commands(sub)
    segmentation_cli.add_commands(sub)
    suppression_cli.add_commands(sub)
