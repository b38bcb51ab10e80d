"""The ``ribnode`` command. Each part of the house registers its own subcommands.

Subcommand modules import heavy dependencies (torch, onnxruntime) inside their handlers only,
so ``ribnode --help`` and ``ribnode serve`` start fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ribnode import __version__


def build_parser() -> argparse.ArgumentParser:
    from ribnode.console import cli as console_cli
    from ribnode.demo import run as demo_cli
    from ribnode.dicom_sr import cli as dicom_sr_cli
    from ribnode.models import cli as models_cli
    from ribnode.node import cli as node_cli
    from ribnode.phantom import cli as phantom_cli
    from ribnode.workers import cli as workers_cli

    parser = argparse.ArgumentParser(
        prog="ribnode",
        description=(
            "ribnode: a clinical AI node beside a PACS. It receives chest radiographs over "
            "DICOM, segments the ribs, suppresses rib and clavicle shadows and sends the "
            "results back to the same study as AI-synthetic series."
        ),
    )
    parser.add_argument("--version", action="version", version=f"ribnode {__version__}")
    parser.add_argument("--config", metavar="YAML", help="settings file (environment RIBNODE_* overrides it)")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    node_cli.add_commands(sub)
    workers_cli.add_commands(sub)
    models_cli.add_commands(sub)
    dicom_sr_cli.add_commands(sub)
    console_cli.add_commands(sub)
    phantom_cli.add_commands(sub)
    demo_cli.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=(args.log_level or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from ribnode.config.redact import RedactingFilter

    for handler in logging.getLogger().handlers:  # no password or token in any log line
        handler.addFilter(RedactingFilter())
    result = args.handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
