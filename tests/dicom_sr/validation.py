"""dciodvfy and dsrdump checks shared by the dicom_sr tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.peers.fixtures import dciodvfy

#: dicom3tools 2022 does not know Synthetic Data (0008,001C, DICOM 2024b): it reports the
#: attribute as an unknown even-group tag, an "Error" that is only its old dictionary.
#: Exactly this line is tolerated; docs/dicom-conformance.md records it.
KNOWN_DICTIONARY_ERRORS = ("(0008,001c)",)


def unexpected_errors(path: Path) -> tuple[list[str], list[str]]:
    """dciodvfy's error lines other than the known dictionary gap, and all its warnings."""
    errors, warnings = dciodvfy(path)
    unexpected = [
        line
        for line in errors
        if not (
            any(tag in line.lower() for tag in KNOWN_DICTIONARY_ERRORS)
            and "not a recognized standard attribute" in line
        )
    ]
    return unexpected, warnings


def assert_valid(path: Path) -> list[str]:
    """Fail on any dciodvfy error except the Synthetic Data dictionary gap; return warnings."""
    errors, warnings = unexpected_errors(path)
    if errors:
        pytest.fail(f"dciodvfy reports errors in {path}:\n" + "\n".join(errors))
    return warnings


#: Warnings that are expected and explained in docs/dicom-conformance.md section 4: Synthetic
#: Data unknown to the 2022 dictionary, ribnode's private tags and private coding scheme,
#: source data passed through as received (RG1's one-component Referring Physician's Name), and
#: Device UID in Contributing Equipment items (Type 3 in the current SOP Common module, unknown
#: to dicom3tools 2022's IOD tables; IHE AIR identifies the algorithm by it).
EXPECTED_WARNINGS = (
    "(0008,001c)",
    '"RIBNODE 1"',
    "<99RIBNODE>",
    "Retired Person Name form",
    "DeviceUID(0018,1002)> - Attribute is not present in standard DICOM IOD",
)


def unexplained_warnings(warnings: list[str]) -> list[str]:
    """The dciodvfy warnings not covered by :data:`EXPECTED_WARNINGS`."""
    return [line for line in warnings if not any(text in line for text in EXPECTED_WARNINGS)]


def assert_valid_and_explained(path: Path) -> list[str]:
    """No dciodvfy error but the dictionary gap, and no warning that is not explained;
    returns the (explained) warnings."""
    warnings = assert_valid(path)
    extra = unexplained_warnings(warnings)
    if extra:
        pytest.fail(f"dciodvfy warnings in {path} not explained in the conformance document:\n" + "\n".join(extra))
    return warnings
