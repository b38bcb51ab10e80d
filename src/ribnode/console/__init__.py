"""ribnode.console: the read-only QA console (provenance and audit) of the node's HTTP service.

- :func:`ribnode.console.app.make_console`: the ASGI app mounted at /console
- :mod:`ribnode.console.queries`: every ledger read it makes
- :mod:`ribnode.console.audit_export`: the audit trail as CSV and PS3.15 A.5 XML
- :mod:`ribnode.console.syslog`: forwarding of the audit trail (RFC 5424 over TLS, RFC 5425)

Like ``ribnode.node`` it never imports torch, diffusers or onnxruntime.
"""
