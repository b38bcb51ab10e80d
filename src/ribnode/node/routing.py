"""Routing rules: which received instances go to the rib pipeline.

A rule is a small boolean expression tree, written in the YAML/JSON settings::

    {"all": [rule, ...]}          every sub-rule holds
    {"any": [rule, ...]}          at least one holds
    {"not": rule}                 the sub-rule does not hold
    {"attr": "Modality", "in": ["CR", "DX"]}
    {"attr": "BodyPartExamined", "in": ["CHEST"], "missing_ok": true, "ignore_case": true}
    {"attr": "SeriesDescription", "matches": "(?i)pa|ap"}     Python regex, searched
    {"attr": "ViewPosition", "equals": "PA"}
    {"attr": "NumberOfFrames", "lt": 2, "missing_ok": true}   also "gt", "le", "ge"
    {"attr": "PixelData", "present": true}

``attr`` is a DICOM keyword. A leaf on an absent (or empty) attribute is false unless
``missing_ok`` is true. Multi-valued attributes match when any value matches. Each evaluation
returns the reason it failed, which the ledger keeps for ignored instances.

Attributes are read leniently: a value pydicom cannot convert (an unknown or wrong VR, a
malformed value) never raises out of a rule. The instance is then not routed, and the reason
names the attribute ("Modality cannot be read: ..."), so a malformed header is kept and
acknowledged, never answered 0xA700 (which would make the sender retry it for ever).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset

__all__ = [
    "DEFAULT_RULE",
    "Decision",
    "RoutingRule",
    "RuleError",
    "UnreadableAttributeError",
    "attribute_text",
    "compile_rule",
]


class RuleError(ValueError):
    """A routing rule is malformed (names the offending part and what was expected)."""


class UnreadableAttributeError(ValueError):
    """An attribute is present but pydicom cannot give its value (unknown or wrong VR, ...)."""


def _raw_value(ds: Dataset, keyword: str) -> Any:
    """``ds[keyword].value``, or None when absent; any conversion error becomes
    :class:`UnreadableAttributeError` naming the attribute (pydicom raises NotImplementedError
    for an unknown VR, ValueError, TypeError, KeyError, ... for malformed values)."""
    try:
        if keyword not in ds:
            return None
        return ds[keyword].value
    except Exception as exc:  # every pydicom conversion error means "cannot be read"
        raise UnreadableAttributeError(f"{keyword} cannot be read: {type(exc).__name__}: {exc}"[:500]) from exc


def attribute_text(ds: Dataset, keyword: str, limit: int) -> str | None:
    """An optional attribute as text for the ledger: None when absent, unreadable or longer
    than ``limit`` (a malformed value must not become a database error and an 0xA700)."""
    try:
        value = _raw_value(ds, keyword)
        text = str(value).strip() if value is not None else ""
    except Exception:  # unreadable, or a value whose str() fails: not worth keeping
        return None
    return text if 0 < len(text) <= limit else None


DEFAULT_RULE: dict[str, Any] = {
    "all": [
        {"attr": "Modality", "in": ["CR", "DX"]},
        {"attr": "BodyPartExamined", "in": ["CHEST"], "missing_ok": True, "ignore_case": True},
        {"attr": "PixelData", "present": True},
        {"attr": "NumberOfFrames", "lt": 2, "missing_ok": True},
        {"attr": "SamplesPerPixel", "equals": 1},
        {"attr": "PhotometricInterpretation", "in": ["MONOCHROME1", "MONOCHROME2"]},
        # Never feed ribnode's own AI-synthetic outputs back in (a PACS may forward them).
        {"not": {"attr": "SyntheticData", "equals": "YES"}},
    ]
}


@dataclass(frozen=True)
class Decision:
    """The outcome of a rule: routed or not, and why not."""

    routed: bool
    reason: str | None = None


Evaluator = Callable[[Dataset], Decision]
_COMPARE = {
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
}
_LEAF_OPS = {"in", "equals", "matches", "present", *_COMPARE}
_LEAF_OPTIONS = {"attr", "missing_ok", "ignore_case"}


def _values(ds: Dataset, keyword: str) -> list[Any] | None:
    """The attribute's values as a list, or None when absent or empty."""
    value = _raw_value(ds, keyword)
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def _norm(value: Any, ignore_case: bool) -> Any:
    if isinstance(value, str):
        value = value.strip()
        return value.upper() if ignore_case else value
    return value


def _leaf(rule: Mapping[str, Any]) -> Evaluator:
    keyword = rule["attr"]
    if not isinstance(keyword, str) or keyword not in keyword_dict:
        raise RuleError(f"routing rule attr {keyword!r} is not a DICOM keyword")
    ops = [k for k in rule if k in _LEAF_OPS]
    unknown = set(rule) - _LEAF_OPS - _LEAF_OPTIONS
    if len(ops) != 1 or unknown:
        raise RuleError(f"routing rule on {keyword} needs exactly one of {sorted(_LEAF_OPS)}, got {sorted(rule)}")
    op = ops[0]
    test = _leaf_test(op, rule[op], bool(rule.get("ignore_case", False)), keyword)
    missing_ok = bool(rule.get("missing_ok", False))

    def evaluate(ds: Dataset) -> Decision:
        values = _values(ds, keyword)
        if op == "present":
            present = values is not None
            if present == bool(rule[op]):
                return Decision(True)
            return Decision(False, f"{keyword} is {'present' if present else 'absent'}")
        if values is None:
            return Decision(True) if missing_ok else Decision(False, f"{keyword} is absent")
        if any(test(v) for v in values):
            return Decision(True)
        shown = values[0] if len(values) == 1 else values
        return Decision(False, f"{keyword} {shown!r} fails {op} {rule[op]!r}")

    return evaluate


def _leaf_test(op: str, operand: Any, ignore_case: bool, keyword: str) -> Callable[[Any], bool]:
    if op == "in":
        if not isinstance(operand, (list, tuple)):
            raise RuleError(f"routing rule 'in' on {keyword} needs a list, got {operand!r}")
        allowed = {_norm(v, ignore_case) for v in operand}
        return lambda v: _norm(v, ignore_case) in allowed
    if op == "equals":
        target = _norm(operand, ignore_case)
        return lambda v: _norm(v, ignore_case) == target or str(_norm(v, ignore_case)) == str(target)
    if op == "matches":
        try:
            pattern = re.compile(operand, re.IGNORECASE if ignore_case else 0)
        except (re.error, TypeError) as exc:
            raise RuleError(f"routing rule 'matches' on {keyword}: bad regex {operand!r}: {exc}") from exc
        return lambda v: pattern.search(str(v)) is not None
    if op == "present":
        return lambda v: True
    if not isinstance(operand, (int, float)):
        raise RuleError(f"routing rule {op!r} on {keyword} needs a number, got {operand!r}")
    compare = _COMPARE[op]
    return lambda v: _as_number(v) is not None and compare(_as_number(v), operand)


def _as_number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _all(parts: list[Evaluator]) -> Evaluator:
    def evaluate(ds: Dataset) -> Decision:
        for part in parts:
            decision = part(ds)
            if not decision.routed:
                return decision
        return Decision(True)

    return evaluate


def _any(parts: list[Evaluator]) -> Evaluator:
    def evaluate(ds: Dataset) -> Decision:
        reasons = []
        for part in parts:
            decision = part(ds)
            if decision.routed:
                return decision
            reasons.append(decision.reason or "false")
        return Decision(False, "none of: " + "; ".join(reasons))

    return evaluate


def _not(part: Evaluator, rule: Any) -> Evaluator:
    def evaluate(ds: Dataset) -> Decision:
        if part(ds).routed:
            return Decision(False, f"matches excluded rule {rule!r}")
        return Decision(True)

    return evaluate


def compile_rule(rule: Mapping[str, Any]) -> Evaluator:
    """Compile a rule tree into a function ``Dataset -> Decision``; malformed rules raise
    :class:`RuleError` here, at start-up, not at the first C-STORE."""
    if not isinstance(rule, Mapping):
        raise RuleError(f"routing rule must be a mapping, got {rule!r}")
    if "attr" in rule:
        return _leaf(rule)
    if len(rule) != 1:
        raise RuleError(f"routing rule needs one of all/any/not/attr, got keys {sorted(rule)}")
    ((op, operand),) = rule.items()
    if op in ("all", "any"):
        if not isinstance(operand, list) or not operand:
            raise RuleError(f"routing rule {op!r} needs a non-empty list, got {operand!r}")
        parts = [compile_rule(r) for r in operand]
        return _all(parts) if op == "all" else _any(parts)
    if op == "not":
        return _not(compile_rule(operand), operand)
    raise RuleError(f"routing rule operator {op!r} unknown: expected all, any, not or attr")


class RoutingRule:
    """The configured routing rule (the default one when ``rules`` is None)."""

    def __init__(self, rules: Mapping[str, Any] | None = None) -> None:
        self.rules = dict(rules) if rules else DEFAULT_RULE
        self._evaluate = compile_rule(self.rules)

    def __call__(self, ds: Dataset) -> Decision:
        """Decide for one dataset (only its attributes are read, never its pixels). Never
        raises: an attribute that cannot be read, or a value a test cannot compare, means
        "not routed" with the reason."""
        try:
            return self._evaluate(ds)
        except UnreadableAttributeError as exc:
            return Decision(False, str(exc))
        except Exception as exc:  # an odd value type (bytes, a sequence) in a comparison
            return Decision(False, f"routing rule cannot be evaluated: {type(exc).__name__}: {exc}"[:500])
