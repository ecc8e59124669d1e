"""What ``ingest run`` imports: a daemon without ``[notify]`` never loads the notifier."""

from __future__ import annotations

import os
import subprocess
import sys

from .support.deployment import DIVA_PASSWORD_ENV, Deployment


def test_a_daemon_without_notify_does_not_import_the_notifier_or_apprise(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.rule()
    code = (
        "import sys\n"
        "from ingest.cli import main\n"
        "try:\n"
        f"    main(['run', '--until-idle', '--config', {str(dep.config_path)!r}])\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'apprise'"
        " or m.startswith('ingest.notify'))\n"
        "print('LOADED', loaded, 'CODE', code, file=sys.stderr)\n"
    )
    env = {**os.environ, DIVA_PASSWORD_ENV: "operator"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert "LOADED [] CODE 0" in proc.stderr, proc.stderr
