"""A real Celery worker (``ribnode worker``'s app, prefork pool, the fuzz's settings file) whose
jobs stop after the decode path: each instance is decoded exactly as the models would get it
(``workers.jobs.decode_for_models``) and recorded, and no model runs. The fuzz uses it to send
thousands of instances through the decode path in minutes on a CPU; ``--models`` in the fuzz
command runs ``ribnode worker`` itself instead.

    python -m tests.e2e.fuzz.worker --config ribnode.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.fuzz.worker", description=__doc__)
    parser.add_argument("--config", required=True, help="the ribnode settings file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import ribnode.workers.tasks  # noqa: F401  (registers the task with the app)
    from ribnode.config.settings import load_settings
    from ribnode.workers.app import make_celery
    from ribnode.workers.pipeline_step import APP_ATTRIBUTE
    from tests.node.helpers import ValidationStep

    settings = load_settings(args.config)
    app = make_celery(settings)
    setattr(app, APP_ATTRIBUTE, ValidationStep(settings))  # inherited by the pool's children
    app.worker_main(
        argv=[
            "worker",
            "-Q",
            f"{settings.broker.gpu_queue},{settings.broker.cpu_queue}",
            "-c",
            "1",
            "-P",
            "prefork",
            "-n",
            "fuzz@%h",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
