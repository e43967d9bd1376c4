"""Fault tests: real worker processes, PostgreSQL and Temporal, broken on purpose."""
