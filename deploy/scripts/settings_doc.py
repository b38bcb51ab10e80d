"""Regenerate the settings table of docs/configuration.md from the Settings model.

Usage: .venv/bin/python deploy/scripts/settings_doc.py [docs/configuration.md]

Everything between the BEGIN/END markers is replaced: one row per setting with its dotted
name, environment variable, type and default, read from ``ribnode.config.settings`` itself (so
the table cannot drift from the code; the comments next to each field are the descriptions).
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from ribnode.config import settings as settings_module
from ribnode.config.settings import Settings

BEGIN, END = "<!-- BEGIN SETTINGS TABLE -->", "<!-- END SETTINGS TABLE -->"

# Notes for fields that have no comment in settings.py.
NOTES = {
    "log_level": "DEBUG, INFO, WARNING, ERROR (the --log-level flag overrides it)",
    "var_dir": "root of the runtime folders",
    "listener.ae_title": "our AE title (called AE)",
    "listener.bind_address": "address the DICOM port binds to; 0.0.0.0 for every interface",
    "listener.port": "DICOM port (104 needs root or CAP_NET_BIND_SERVICE)",
    "listener.max_associations": "simultaneous associations; more are refused (local limit exceeded)",
    "listener.allowed_senders": "calling AE titles allowed to associate, each optionally bound to a host",
    "listener.allowed_senders[].ae_title": "calling AE title",
    "listener.allowed_senders[].host": "IP address the caller must come from (any when unset)",
    "listener.tls_key": "PEM private key of tls_cert",
    "listener.tls_ca": "PEM CA bundle used to verify client certificates",
    "listener.tls_verify_client": "require a client certificate signed by tls_ca",
    "spool.directory": "received instances, <StudyUID>/<SOPUID>.dcm; workers on other hosts mount it at the same path",
    "spool.quiet_period_s": "a study is complete after this long without a new instance",
    "spool.max_wait_s": "a study is dispatched anyway once its oldest waiting instance waited this long",
    "ledger.url": "SQLAlchemy URL: sqlite:///file or postgresql+psycopg://user:pw@host/db",
    "broker.url": "filesystem:// (embedded, one host) or redis://host:6379/0",
    "broker.folder": "folders of the filesystem broker",
    "broker.gpu_queue": "queue of the model jobs",
    "broker.cpu_queue": "queue of the export jobs",
    "broker.max_retries": "retries of a failing job before it is dead",
    "broker.retry_backoff_s": "first retry delay; doubles each retry, with jitter U(0.5, 1)",
    "broker.retry_backoff_max_s": "cap of the retry delay",
    "routing.rules": "routing rule tree (ribnode.node.routing); empty: the default rule",
}


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Comments on the line of each field or the lines just above it, from the source."""
    source = inspect.getsource(model)
    lines = source.splitlines()
    out: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = lines[node.lineno - 1]
            text = line.split("#", 1)[1].strip() if "#" in line else ""
            above, i = [], node.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#"):
                above.insert(0, lines[i].strip().lstrip("#").strip())
                i -= 1
            out[node.target.id] = " ".join([*above, text]).strip()
    return out


def fmt_default(value: Any) -> str:
    if isinstance(value, BaseModel):
        return "`" + str(value.model_dump(mode="json")) + "`"
    if isinstance(value, list):
        return "`" + str([v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]) + "`"
    return f"`{value!r}`" if not isinstance(value, Path) else f"`{value}`"


def type_name(annotation: Any) -> str:
    """A short readable type: ``str``, ``Path | None``, ``'onnx' | 'torch'``."""
    if get_origin(annotation) is Literal:
        return " \\| ".join(repr(a) for a in get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    text = str(annotation).replace("typing.", "").replace("pathlib.", "")
    return text.replace("ribnode.config.settings.", "").replace("|", "\\|")


def rows(model: type[BaseModel], prefix: str = "", in_list: bool = False) -> list[str]:
    out = []
    comments = field_comments(model)
    for name, field in model.model_fields.items():
        annotation = field.annotation
        dotted = f"{prefix}{name}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += rows(annotation, dotted + ".")
            continue
        default = "(required)" if field.is_required() else fmt_default(field.get_default(call_default_factory=True))
        env = "" if in_list else "`RIBNODE_" + dotted.upper().replace(".", "__") + "`"
        doc = (comments.get(name) or NOTES.get(dotted, "")).replace("|", "\\|")
        out.append(f"| `{dotted}` | {env} | `{type_name(annotation)}` | {default} | {doc} |")
        item = get_args(annotation)[0] if get_origin(annotation) is list and get_args(annotation) else None
        if isinstance(item, type) and issubclass(item, BaseModel):
            out += rows(item, dotted + "[].", in_list=True)
    return out


def table() -> str:
    head = ["| setting | environment variable | type | default | notes |", "|---|---|---|---|---|"]
    return "\n".join(head + rows(Settings))


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "docs/configuration.md")
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} markers")
    before, rest = text.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    path.write_text(f"{before}{BEGIN}\n{table()}\n{END}{after}")
    print(f"{path}: settings table regenerated ({len(rows(Settings))} settings)")
    return 0


if __name__ == "__main__":
    assert settings_module  # the module whose source the comments come from
    sys.exit(main(sys.argv[1:]))
