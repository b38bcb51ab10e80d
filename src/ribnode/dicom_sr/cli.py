"""``ribnode provenance FILE...``: what a QA reviewer sees in a ribnode object.

Prints, per file, the provenance read from standard attributes alone
(:func:`ribnode.dicom_sr.provenance.describe_standard`) and, when present, the private
"RIBNODE 1" record. Register with ``ribnode.dicom_sr.cli.add_commands(sub)`` in ``ribnode.cli``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``ribnode provenance``."""
    parser = sub.add_parser(
        "provenance",
        help="show the AI provenance of ribnode output objects (SC, SEG, SR)",
        description=(
            "Read DICOM files and print which AI model made them, with which weights, from "
            "which source instance and when, from standard attributes (and the private block)."
        ),
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--json", action="store_true", help="one JSON document for all files")
    parser.set_defaults(handler=run_provenance)


def provenance_of(path: Path) -> dict[str, Any]:
    """Standard-attribute provenance of one file, plus its private record if any."""
    import pydicom

    from ribnode.dicom_sr.provenance import describe_standard, read_private_block

    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    info = describe_standard(dataset)
    info["file"] = str(path)
    info["private_record"] = read_private_block(dataset)
    return info


def _print_text(info: dict[str, Any]) -> None:
    print(f"{info['file']}")
    print(f"  {info['sop_class']} ({info['modality']}) {info['sop_instance_uid']}")
    print(f"  series: {info['series_description']}")
    print(f"  synthetic data: {info['synthetic_data'] or '-'}; "
          f"content qualification: {info['content_qualification'] or '-'}")
    for item in info["ai_equipment"]:
        print(f"  {item['purpose']}: {item['model']} {'/'.join(item['software_versions'])}, "
              f"{item['contribution_datetime']}")
        print(f"    {item['contribution_description']}")
    print(f"  derived from: {', '.join(info['derived_from'])}")


def run_provenance(args: argparse.Namespace) -> int:
    """Handler of ``ribnode provenance``; exit status 1 if a file is missing."""
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        print(f"no such file: {', '.join(missing)}")
        return 1
    infos = [provenance_of(path) for path in args.files]
    if args.json:
        print(json.dumps(infos, indent=2, sort_keys=True))
    else:
        for info in infos:
            _print_text(info)
    return 0
