"""A seeded fuzz of the C-STORE path and the worker's decode path (issue 29).

``test_fuzz.py`` runs a short one in ``make test``; ``python -m tests.e2e.fuzz --minutes N --seed S``
runs one for as long as asked (see docs/operations.md, "Fuzzing").
"""
