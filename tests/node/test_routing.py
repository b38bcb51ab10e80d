"""Routing rules: the default rule and the expression language."""

from __future__ import annotations

import pytest
from pydicom import dcmread

from ribnode.node.routing import RoutingRule, RuleError, compile_rule
from tests.node.helpers import dx_dataset


def test_default_routes_chest_dx_and_cr(rg1_files) -> None:
    rule = RoutingRule()
    assert rule(dx_dataset()).routed
    assert rule(dcmread(rg1_files["RG1_UNCR"], stop_before_pixels=False)).routed


def test_default_routes_absent_body_part() -> None:
    ds = dx_dataset()
    del ds.BodyPartExamined
    assert RoutingRule()(ds).routed


@pytest.mark.parametrize(
    ("attrs", "reason_part"),
    [
        ({"Modality": "CT"}, "Modality 'CT'"),
        ({"BodyPartExamined": "EXTREMITY"}, "BodyPartExamined 'EXTREMITY'"),
        ({"NumberOfFrames": 3}, "NumberOfFrames"),
        ({"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB"}, "SamplesPerPixel"),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, "PhotometricInterpretation"),
        ({"SyntheticData": "YES"}, "excluded rule"),
    ],
)
def test_default_ignores_with_reason(attrs, reason_part) -> None:
    decision = RoutingRule()(dx_dataset(**attrs))
    assert not decision.routed
    assert reason_part in decision.reason


def test_default_ignores_rg3_extremity(rg3_files) -> None:
    decision = RoutingRule()(dcmread(rg3_files["RG3_UNCR"]))
    assert not decision.routed and "EXTREMITY" in decision.reason


def test_default_body_part_case_insensitive() -> None:
    assert RoutingRule()(dx_dataset(BodyPartExamined="Chest")).routed


def test_any_not_matches_and_numbers() -> None:
    rule = RoutingRule(
        {
            "all": [
                {"any": [{"attr": "ViewPosition", "equals": "PA"}, {"attr": "ViewPosition", "equals": "AP"}]},
                {"not": {"attr": "SeriesDescription", "matches": "(?i)lateral"}},
                {"attr": "Rows", "ge": 64},
                {"attr": "Columns", "lt": 4096},
            ]
        }
    )
    assert rule(dx_dataset(SeriesDescription="Chest PA")).routed
    assert not rule(dx_dataset(SeriesDescription="Chest LATERAL")).routed
    decision = rule(dx_dataset(ViewPosition="LL"))
    assert not decision.routed and decision.reason.startswith("none of:")
    assert not rule(dx_dataset(rows=32)).routed


def test_multivalued_attribute_matches_any_value() -> None:
    rule = RoutingRule({"attr": "ImageType", "in": ["PRIMARY"]})
    assert rule(dx_dataset(ImageType=["ORIGINAL", "PRIMARY"])).routed
    assert not rule(dx_dataset(ImageType=["DERIVED", "SECONDARY"])).routed


def test_missing_attribute_fails_unless_missing_ok() -> None:
    ds = dx_dataset()
    assert not RoutingRule({"attr": "SeriesDescription", "equals": "x"})(ds).routed
    assert RoutingRule({"attr": "SeriesDescription", "equals": "x", "missing_ok": True})(ds).routed


@pytest.mark.parametrize(
    "bad",
    [
        {"attr": "NoSuchKeyword", "in": ["A"]},
        {"attr": "Modality"},
        {"attr": "Modality", "in": "CR"},
        {"attr": "Modality", "in": ["CR"], "equals": "CR"},
        {"attr": "Rows", "lt": "big"},
        {"attr": "SeriesDescription", "matches": "("},
        {"all": []},
        {"xor": [{"attr": "Modality", "in": ["CR"]}]},
        {"all": [{"attr": "Modality", "in": ["CR"]}], "any": []},
        ["not a mapping"],
    ],
)
def test_malformed_rules_fail_at_compile_time(bad) -> None:
    with pytest.raises(RuleError):
        compile_rule(bad)
