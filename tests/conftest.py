"""Shared pytest configuration: real peers (Orthanc, dcmtk, Redis, PostgreSQL) on loopback."""

pytest_plugins = ["tests.peers.fixtures"]
