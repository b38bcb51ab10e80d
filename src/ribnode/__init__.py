"""ribnode: a clinical AI node beside a PACS (rib segmentation and rib suppression)."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
