"""SayPI under the `gunicorn` command: `gunicorn -c deploy/gunicorn.conf.py`.

Reads the same environment variables as `python run.py serve` (see
`python run.py --help`) and installs the same hooks (app/ops/serve.py):
- on_starting (master): wipe PROMETHEUS_MULTIPROC_DIR, so counters start at 0;
- the app is built in each worker after fork (its worker class), pool pre-warmed and
  health checked before that worker accepts a connection; never in the master;
- post_worker_init: /health/ready turns 503 the moment the worker gets SIGTERM;
- worker_exit: close the worker's pool and threads;
- child_exit (master): mark the dead worker's gauges dead in the metrics.

Unlike run.py this neither starts an embedded PostgreSQL nor migrates:
DATABASE_URL is required, and `python run.py migrate` runs once per release
(the Kubernetes Job in deploy/kubernetes/migrate-job.yaml).

Like run.py's __main__, this file is an entry point: it reads os.environ and
writes PROMETHEUS_MULTIPROC_DIR into it, which prometheus_client reads once,
when the workers first import it. Settings given on gunicorn's command line
(-b, -w, ...) still win over the ones made here.
"""

import os
import sys
from pathlib import Path

# The checkout this file belongs to, for running it from a source tree.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.ops import serve


def _build_worker_app(config, logger, dsn):
    """In a worker, after fork: its app and the dependencies it closes at exit."""
    from app.server import build_worker_app

    return build_worker_app(config, logger, dsn)


_config = serve.cli_config(os.environ, sys.stdout)  # exits 2 on an invalid setting
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _config.prometheus_multiproc_dir

# bind, workers, worker_class, threads, timeouts, hooks and wsgi_app: every
# gunicorn setting SayPI derives from its configuration, as module globals.
globals().update(serve.cli_settings(_config, sys.stdout, _build_worker_app))
