"""Starts (or stops) a throwaway PostgreSQL with pgvector from PyPI's pgserver wheel.

    .venv/bin/python scripts/throwaway_postgres.py start DIR   # prints its URL
    .venv/bin/python scripts/throwaway_postgres.py stop DIR
"""
import sys

import pgserver

command, pgdata = sys.argv[1], sys.argv[2]
if command == "start":
    print(pgserver.get_server(pgdata, cleanup_mode=None).get_uri())
elif command == "stop":
    pgserver.get_server(pgdata, cleanup_mode="stop")  # stopped as this handle closes
else:
    sys.exit(f"unknown command {command!r}: start or stop")
