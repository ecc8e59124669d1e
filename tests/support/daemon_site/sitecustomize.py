"""Run by Python at start-up when this folder is on PYTHONPATH, which the test suite
arranges for the daemons (``ingest run``) it starts while a deployment checks intents: with
``INGEST_TEST_INTENT_HOLD`` set, each ledger commit that records an intent is held that many
seconds, as ``tests/support/intents.py`` does for engines run in a thread, so that an
archive call sent before its intent's commit reaches the emulator's hook first.

Loaded by file path, not as ``tests.support``: the daemon's ``sys.path`` need not hold the
repository. Without the variable it does nothing.
"""

import os

_HOLD = os.environ.get("INGEST_TEST_INTENT_HOLD")

if _HOLD:
    import importlib.util
    import sys
    from pathlib import Path

    _spec = importlib.util.spec_from_file_location(
        "_ingest_test_intents", Path(__file__).resolve().parents[1] / "intents.py"
    )
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _module  # its dataclass looks its module up there
    _spec.loader.exec_module(_module)
    _module.hold_intent_commits(float(_HOLD))
