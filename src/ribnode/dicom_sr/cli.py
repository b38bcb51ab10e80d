"""``ribnode provenance FILE|URL...``: what a QA reviewer sees in a ribnode object.

Each argument is a local file or a DICOMweb URL of a study, series or instance
(``<base>/studies/<uid>[/series/<uid>[/instances/<uid>]]``, fetched with WADO-RS), so a reviewer
can check what the PACS actually holds. Prints, per object, the provenance read from standard
attributes alone
(:func:`ribnode.dicom_sr.provenance.describe_standard`) and, when present, the private
"RIBNODE 1" record. Register with ``ribnode.dicom_sr.cli.add_commands(sub)`` in ``ribnode.cli``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

#: A DICOMweb study, series or instance URL (PS3.18 10.4 WADO-RS resources).
DICOMWEB_URL = re.compile(
    r"^(?P<base>https?://.+?)/studies/(?P<study>[0-9.]+)"
    r"(?:/series/(?P<series>[0-9.]+))?(?:/instances/(?P<instance>[0-9.]+))?/?$"
)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``ribnode provenance``."""
    parser = sub.add_parser(
        "provenance",
        help="show the AI provenance of ribnode output objects (SC, SEG, SR)",
        description=(
            "Read DICOM files and print which AI model made them, with which weights, from "
            "which source instance and when, from standard attributes (and the private block)."
        ),
    )
    parser.add_argument(
        "files", nargs="+", metavar="FILE|URL", help="a DICOM file, or a DICOMweb URL of a study, series or instance"
    )
    parser.add_argument("--username", help="HTTP basic auth user for DICOMweb URLs")
    parser.add_argument("--password", help="HTTP basic auth password (or RIBNODE_DICOMWEB_PASSWORD)")
    parser.add_argument("--json", action="store_true", help="one JSON document for all files")
    parser.set_defaults(handler=run_provenance)


def provenance_of(path: Path) -> dict[str, Any]:
    """Standard-attribute provenance of one file, plus its private record if any."""
    import pydicom

    return describe(pydicom.dcmread(path, stop_before_pixels=True), str(path))


def describe(dataset: Any, where: str) -> dict[str, Any]:
    """Standard-attribute provenance of one dataset, its private record, and where it was."""
    from ribnode.dicom_sr.provenance import describe_standard, read_private_block

    info = describe_standard(dataset)
    info["file"] = where
    info["private_record"] = read_private_block(dataset)
    return info


def fetch_dicomweb(url: str, username: str | None = None, password: str | None = None) -> list[Any]:
    """The instances of a DICOMweb study, series or instance URL (WADO-RS), as datasets.

    Raises ``ValueError`` for a URL that names no study; HTTP errors propagate
    (``requests.HTTPError``)."""
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    match = DICOMWEB_URL.match(url)
    if match is None:
        raise ValueError(
            f"{url!r} is not a DICOMweb URL of the form <base>/studies/<uid>[/series/<uid>[/instances/<uid>]]"
        )
    session = create_session_from_user_pass(username, password or "") if username else None
    client = DICOMwebClient(url=match["base"], session=session)
    study, series, instance = match["study"], match["series"], match["instance"]
    if instance:
        return [client.retrieve_instance(study, series, instance)]
    if series:
        return list(client.retrieve_series(study, series))
    return list(client.retrieve_study(study))


def _print_text(info: dict[str, Any]) -> None:
    print(f"{info['file']}")
    print(f"  {info['sop_class']} ({info['modality']}) {info['sop_instance_uid']}")
    print(f"  series: {info['series_description']}")
    print(
        f"  synthetic data: {info['synthetic_data'] or '-'}; "
        f"content qualification: {info['content_qualification'] or '-'}"
    )
    for item in info["ai_equipment"]:
        print(
            f"  {item['purpose']}: {item['model']} {'/'.join(item['software_versions'])}, "
            f"{item['contribution_datetime']}"
        )
        print(f"    {item['contribution_description']}")
    print(f"  derived from: {', '.join(info['derived_from'])}")


def run_provenance(args: argparse.Namespace) -> int:
    """Handler of ``ribnode provenance``; exit status 1 if a file is missing or a URL cannot be
    read."""
    import os

    import requests

    urls = [item for item in args.files if re.match(r"^https?://", item)]
    missing = [item for item in args.files if item not in urls and not Path(item).is_file()]
    if missing:
        print(f"no such file: {', '.join(missing)}")
        return 1
    password = getattr(args, "password", None) or os.environ.get("RIBNODE_DICOMWEB_PASSWORD")
    infos = []
    for item in args.files:
        if item not in urls:
            infos.append(provenance_of(Path(item)))
            continue
        try:
            datasets = fetch_dicomweb(item, getattr(args, "username", None), password)
        except (ValueError, requests.RequestException) as exc:
            print(f"cannot read {item}: {exc}")
            return 1
        infos.extend(describe(dataset, f"{item} ({dataset.SOPInstanceUID})") for dataset in datasets)
    if args.json:
        print(json.dumps(infos, indent=2, sort_keys=True))
    else:
        for info in infos:
            _print_text(info)
    return 0
