"""ribnode.ledger: the shared state of the node and the workers (SQLAlchemy 2, Alembic).

- :mod:`ribnode.ledger.store`: :class:`Ledger`, studies, instances, jobs and their transitions, audit
- :mod:`ribnode.ledger.deliveries`: the export's deliveries and output objects
- :mod:`ribnode.ledger.dispatch`: a committed job goes to the queue (the publishing is passed in)
- :mod:`ribnode.ledger.schema`: the tables; :mod:`ribnode.ledger.migrations`: their Alembic revisions
- :mod:`ribnode.ledger.engine`: the database engine (SQLite or PostgreSQL)
"""
