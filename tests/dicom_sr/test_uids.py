"""UIDs that follow content: the same key gives the same UID, any other key another UID."""

from __future__ import annotations

import numpy as np
import pytest

from ribnode.dicom_sr.uids import (
    KINDS,
    array_digest,
    combined_sha256,
    content_key,
    content_uid,
    device_observer_uid,
    model_device_uid,
)

KEY = content_key({"source": "1.2.3", "steps": 1})


def test_same_key_same_uid() -> None:
    assert content_uid(KEY, "sc") == content_uid(KEY, "sc")
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})


def test_kinds_give_distinct_valid_uids() -> None:
    uids = [content_uid(KEY, kind) for kind in KINDS] + [content_uid(KEY, "sr.tracking.ribs")]
    assert len(set(uids)) == len(uids)
    for uid in uids:
        assert uid.startswith("1.2.826.0.1.3680043.8.498.") and len(uid) <= 64


def test_any_change_in_the_key_changes_the_uid() -> None:
    other = content_key({"source": "1.2.3", "steps": 2})
    assert content_uid(other, "sc") != content_uid(KEY, "sc")


def test_array_digest_sees_every_pixel_shape_and_dtype() -> None:
    pixels = np.zeros((8, 8), dtype=np.uint16)
    changed = pixels.copy()
    changed[7, 7] = 1
    assert array_digest(pixels) == array_digest(pixels.copy())
    assert array_digest(changed) != array_digest(pixels)
    assert array_digest(pixels.reshape(4, 16)) != array_digest(pixels)
    assert array_digest(pixels.astype(np.int16)) != array_digest(pixels)


def test_device_uids_follow_the_weights() -> None:
    sha = "0f" * 32
    assert device_observer_uid(sha) == device_observer_uid(sha)
    assert device_observer_uid(sha) != device_observer_uid("1e" * 32)
    assert model_device_uid("m", "1", sha) != model_device_uid("m", "2", sha)
    assert combined_sha256("a" * 64, "b" * 64) != combined_sha256("b" * 64, "a" * 64)


@pytest.mark.parametrize(("key", "kind"), [("abc", "sc"), (KEY, "pdf"), (KEY.upper(), "sc")])
def test_bad_inputs_are_named(key: str, kind: str) -> None:
    with pytest.raises(ValueError):
        content_uid(key, kind)
