"""One typed settings object for the whole node.

Precedence, lowest to highest: defaults < YAML file < ``RIBNODE_*`` environment variables
< explicit overrides (CLI flags). Nested sections use ``__`` in environment variables,
e.g. ``RIBNODE_LISTENER__PORT=11112``.
"""

from ribnode.config.settings import (
    BrokerSettings,
    DestinationSettings,
    ExportSettings,
    LedgerSettings,
    ListenerSettings,
    ModelSettings,
    OutputSettings,
    RoutingSettings,
    Settings,
    SpoolSettings,
    load_settings,
)

__all__ = [
    "BrokerSettings",
    "DestinationSettings",
    "ExportSettings",
    "LedgerSettings",
    "ListenerSettings",
    "ModelSettings",
    "OutputSettings",
    "RoutingSettings",
    "Settings",
    "SpoolSettings",
    "load_settings",
]
