"""Deterministic UIDs: same inputs, same UID; any input changed, a new UID."""

from __future__ import annotations

import pytest
from pydicom.uid import UID

from ribnode.dicom_sr.uids import KINDS, combined_sha256, derived_uid, device_observer_uid

SOURCE = "1.3.6.1.4.1.5962.1.1.9.1.1.20040826185059.5457"
SHA = "0f" * 32


def test_same_inputs_same_uid() -> None:
    assert derived_uid(SOURCE, SHA, "sc") == derived_uid(SOURCE, SHA, "sc")


def test_every_kind_differs_and_is_valid() -> None:
    uids = [derived_uid(SOURCE, SHA, kind) for kind in KINDS]
    assert len(set(uids)) == len(KINDS)
    for uid in uids:
        assert UID(uid).is_valid and len(uid) <= 64


def test_weights_and_source_change_the_uid() -> None:
    base = derived_uid(SOURCE, SHA, "seg")
    assert derived_uid(SOURCE, "1e" * 32, "seg") != base
    assert derived_uid(SOURCE + "1", SHA, "seg") != base


def test_device_observer_uid_follows_weights() -> None:
    assert device_observer_uid(SHA) == device_observer_uid(SHA)
    assert device_observer_uid(SHA) != device_observer_uid("1e" * 32)


def test_combined_hash_is_ordered() -> None:
    a, b = "aa" * 32, "bb" * 32
    assert combined_sha256(a, b) != combined_sha256(b, a)
    assert len(combined_sha256(a, b)) == 64


@pytest.mark.parametrize(
    ("source", "sha", "kind", "message"),
    [
        ("1.2.x", SHA, "sc", "not a valid DICOM UID"),
        ("", SHA, "sc", "not a valid DICOM UID"),
        (SOURCE, "abc", "sc", "64 lowercase hex"),
        (SOURCE, SHA.upper(), "sc", "64 lowercase hex"),
        (SOURCE, SHA, "pdf", "is not one of"),
    ],
)
def test_bad_inputs_are_named(source: str, sha: str, kind: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        derived_uid(source, sha, kind)
