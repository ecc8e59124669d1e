"""A pytest plugin that fails every test whose captured output or log holds a test secret.

A test can read only its own output (``capsys``, ``caplog``), so no single test can prove
that no *other* test printed the password. pytest keeps each test's captured stdout,
stderr and log records in its report, phase by phase; this plugin reads them there, so
the test that leaked fails (its setup or teardown errors), whichever it is.

What counts as a secret: ``PASSWORD`` (the unusual DIVA password the security tests use)
in the forms a log line or a JSON document would carry it, and anything shaped like a JWT,
which is what every token the emulator issues is. The short role passwords of the
session emulator (``operator``, ``admin``...) are also user names, so they cannot be
told apart from ordinary output and are not looked for.

It sees nothing under ``pytest -s``: output that is not captured is not in the report.

Loaded by ``tests/conftest.py``; ``tests/test_security.py`` runs it on a deliberately
leaky test session to show that it can fail.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from collections.abc import Generator

import pytest

#: A password no log line would contain by chance: quotes, colon, percent, unicode.
PASSWORD = "Pa$$:w0rd%'\"ü-7f3a91"

#: What any text form of the password holds: its head, up to the first character that
#: ``repr``, JSON or a Python escape would rewrite (a quote), and that head percent-encoded.
_HEAD = PASSWORD[: PASSWORD.index("'")]
#: Base64 (HTTP basic authentication) of the password at each of the three alignments
#: it can take after a prefix such as ``user:``, whole groups only.
_BASE64 = tuple(
    base64.b64encode(chunk[: len(chunk) // 3 * 3]).decode("ascii")
    for chunk in (PASSWORD.encode()[skip:] for skip in (0, 1, 2))
)
SECRET_FORMS = (_HEAD, urllib.parse.quote(_HEAD, safe=""), *_BASE64)
#: A JWT: base64url of '{"' then more base64url, and its other parts if any.
TOKEN = re.compile(r"eyJ[A-Za-z0-9_-]{10,}(?:\.[A-Za-z0-9_-]*){0,2}")

#: Whole forms to blank out of a leaky test's shown output (longest first, so the head
#: alone goes only where the rest was cut off).
_WHOLE = sorted(
    {
        PASSWORD,
        repr(PASSWORD)[1:-1],
        json.dumps(PASSWORD)[1:-1],
        PASSWORD.encode("unicode_escape").decode("ascii"),
        *SECRET_FORMS,
    },
    key=len,
    reverse=True,
)


def redact(text: str) -> str:
    for form in _WHOLE:
        text = text.replace(form, "<the test password>")
    return TOKEN.sub("<a DIVA token>", text)


def leaks_in(text: str) -> list[str]:
    """What kinds of secret ``text`` holds (never the secret itself)."""
    found = []
    if any(form in text for form in SECRET_FORMS):
        found.append("the test password")
    if TOKEN.search(text):
        found.append("a DIVA token")
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    # A report carries the sections of every phase so far; read only this phase's, so a
    # leak in the call is blamed on the call, not again on the teardown.
    suffix = f" {report.when}"
    problems = [
        f"{title}: {kind}"
        for title, text in report.sections
        if title.startswith("Captured ") and title.endswith(suffix)
        for kind in leaks_in(text)
    ]
    if problems:
        message = "secret in the test's output (see tests/leakcheck.py):\n  " + "\n  ".join(
            problems
        )
        if report.failed and report.longrepr is not None:
            message = f"{report.longrepr}\n\n{message}"
        report.outcome = "failed"
        report.longrepr = message
        # The failure report prints the captured output: not the secret again.
        report.sections = [(title, redact(text)) for title, text in report.sections]
    return report
