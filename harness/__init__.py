"""Real services the tests and the benchmark start on 127.0.0.1 and stop by PID.

PostgreSQL (embedded, the machine's, a primary with a hot standby), Redis,
PgBouncer, HAProxy and SayPI itself (`run.py serve`). Neither tests nor bench
is imported here: both import this.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
