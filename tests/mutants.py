"""The mutation check: each critical guarantee must have a test that fails when it breaks.

Run from the project root (slow: minutes per mutation on a loaded 2-core machine, so not
in every CI run)::

    .venv/bin/python -m tests.mutants                  # every mutation, a markdown kill table
    .venv/bin/python -m tests.mutants --list           # the mutations and their tests
    .venv/bin/python -m tests.mutants --check          # only: does every snippet still apply?
    .venv/bin/python -m tests.mutants --only backoff-zero --only verify-forced-on
    .venv/bin/python -m tests.mutants --json           # the results as JSON on stdout
    .venv/bin/python -m tests.mutants --rev HEAD       # a commit instead of the working tree

The project (the working tree's tracked and untracked, not ignored, files; or ``--rev``)
is copied to a scratch folder; the real checkout is never touched. The targeted tests of
every mutation first run together on that unmutated copy (the baseline: each must pass).
Then each mutation in turn gets a fresh copy with its one edit, and its targeted tests run
there with ``PYTHONPATH`` on the copy, so the daemons and the emulator the tests start
(``sys.executable -m ingest``) import the mutated code too (checked before anything runs).

Each mutation ends as:

- ``killed``: a targeted test failed (the guarantee is guarded);
- ``survived``: every targeted test passed with the bug in place (a hole in the tests);
- ``timeout``: the tests ran past ``--timeout`` (reported apart: a hang is not a kill);
- ``error``: the mutation could not be judged. Above all **snippet not found**: the code
  it edits has moved or changed, so the mutation must be updated, never counted as killed;
  also a baseline that did not pass, a targeted test that does not exist, an edit that
  does not compile.

The exit status is 0 only when every mutation selected was killed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["MUTATIONS", "Edit", "Mutation", "Result", "main"]


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` by ``new``; ``old`` must occur exactly ``count`` times."""

    old: str
    new: str
    count: int = 1


@dataclass(frozen=True)
class Mutation:
    """One deliberate bug: the guarantee it breaks, its edits, and the tests that must fail."""

    name: str
    guarantee: str  # as the README's Reliability section (or the doc named) words it
    file: str  # relative to the project root
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]  # pytest node ids or files, relative to the project root
    #: for a change exact snippets cannot say well: returns the mutated source, or the
    #: source unchanged when what it looks for is not there ("snippet not found")
    transform: Callable[[str], str] | None = None


def _m(
    name: str,
    guarantee: str,
    file: str,
    tests: Sequence[str],
    *edits: Edit,
    transform: Callable[[str], str] | None = None,
) -> Mutation:
    return Mutation(name, guarantee, file, tuple(edits), tuple(tests), transform)


ENGINE = "ingest/engine/core.py"
DISPATCH = "ingest/engine/dispatch.py"
SUBMISSIONS = "ingest/engine/submissions.py"
WAITS = "ingest/engine/waits.py"
FOLDERS = "ingest/engine/folders.py"
CLIENT = "ingest/client.py"
AUTH = "ingest/auth.py"

T_ENGINE = "tests/test_engine.py::"
T_PACING = "tests/test_engine_pacing.py::"
T_FAILSAFE = "tests/test_engine_failsafe.py::"
T_CLIENT_FS = "tests/test_client_failsafe.py::"


def _calls_after_failed_commit(source: str) -> str:
    """Wrap ``Engine._commit``'s transaction so that, when its commit fails, the turn's
    calls go out anyway (the bug: DIVA called for intents that were rolled back)."""
    found = re.search(
        r"^( +)with self\.ledger\.batch\(\) as tx:\n((?:\1 +.*\n)+)", source, re.MULTILINE
    )
    if found is None or "def _commit(" not in source[: found.start()]:
        return source
    ind, body = found.group(1), found.group(2)
    wrapped = (
        f"{ind}turn = None\n{ind}try:\n"
        f"{ind}    with self.ledger.batch() as tx:\n"
        + "".join(f"    {line}\n" for line in body.splitlines())
        + f"{ind}except LedgerError:\n{ind}    if turn is not None:\n"
        f"{ind}        for job in turn.calls:\n{ind}            self.dispatcher.run(job)\n"
        f"{ind}    raise\n"
    )
    return source[: found.start()] + wrapped + source[found.end() :]


MUTATIONS: tuple[Mutation, ...] = (
    # -- the seven that survived the first hand-made mutation run (issue 16) ------------
    _m(
        "calls-inside-transaction",
        "Intent before call: the SUBMITTING row of an archive call commits before the call leaves",
        ENGINE,
        [
            T_ENGINE + "test_a_file_drop_is_archived_then_deleted_by_diva",
            "tests/test_engine_restart.py::test_killed_right_after_the_intent_commit",
        ],
        # The calls go out from inside the turn's transaction, before its commit.
        Edit(
            "            step(turn)\n",
            """\
            step(turn)
            for job in turn.calls:
                self.dispatcher.run(job)
            turn.calls.clear()
""",
        ),
    ),
    _m(
        "calls-after-failed-commit",
        "Intent before call; ledger disk full: stop submitting, say why, recover "
        "(no call when the turn's commit fails)",
        ENGINE,
        [
            T_ENGINE + "test_no_call_goes_out_when_the_turns_commit_fails",
            "tests/chaos/test_storage.py::test_ledger_disk_full",
        ],
        transform=_calls_after_failed_commit,
    ),
    _m(
        "settle-shortcut-without-quiet-mtime",
        "Settle: a quiet native watcher vouches for a drop only when its newest mtime is as "
        "old as the window",
        FOLDERS,
        [
            "tests/test_settle.py::test_a_quiet_native_watcher_vouches_only_for_a_drop_whose_"
            "mtime_is_as_old_as_the_window",
            T_ENGINE + "test_a_growing_file_is_not_submitted_before_it_settles",
        ],
        Edit("            and time.time() - sig[1] / 1e9 >= self.settle_max\n", ""),
    ),
    _m(
        "queue-full-fails-at-once",
        "Queue full (1032) holds every submission, spending no drop's attempt",
        "ingest/wire.py",
        [
            T_PACING + "test_queue_full_holds_the_drops_without_spending_their_attempts",
            "tests/test_client.py::test_queue_full_is_busy_and_transient",
        ],
        Edit(
            '            return DivaBusy(f"DIVA is busy ({where}): {detail}", **ctx)\n',
            "            return DivaRefused(message, **ctx)\n",
        ),
    ),
    _m(
        "queue-full-spends-an-attempt",
        "Queue full (1032) holds every submission, spending no drop's attempt",
        "ingest/engine/submissions.py",
        [
            T_PACING + "test_queue_full_holds_the_drops_without_spending_their_attempts",
            T_PACING + "test_queue_full_holds_every_submission_not_only_the_refused_one",
        ],
        Edit("        tr.attempts -= 1\n", ""),
    ),
    _m(
        "queue-full-holds-only-the-refused-drop",
        "Queue full (1032) holds every submission, spending no drop's attempt",
        "ingest/engine/submissions.py",
        [T_PACING + "test_queue_full_holds_every_submission_not_only_the_refused_one"],
        Edit(
            "            self.schedule.pause(now + hold)\n",
            "            self._held_to = now + hold\n",
        ),
        Edit(
            "        delay = max(0.0, self.schedule.pause_until - now)\n",
            "        delay = max(0.0, self._held_to - now)\n",
        ),
    ),
    _m(
        "backoff-zero",
        "Backoff doubles, ±20% (retries are spaced)",
        DISPATCH,
        [T_PACING + "test_backoff_doubles_from_one_attempt_to_the_next"],
        Edit(
            "    delay: float = min(cap, base * (2 ** max(0, attempt - 1)))\n",
            "    delay: float = 0.0\n",
        ),
    ),
    _m(
        "engine-deletes-sources",
        "ingest never deletes media: DIVA removes the source after storing it",
        SUBMISSIONS,
        [
            T_PACING + "test_sources_diva_leaves_in_place_stay_exactly_as_they_were",
            T_ENGINE + "test_without_delete_on_source_the_file_stays_and_is_not_archived_again",
        ],
        Edit(
            """\
        present = [p for p in tr.sources() if not absent(p)]
        deleted = tr.source_deleted = not present
""",
            """\
        for p in tr.sources():
            if os.path.isfile(p):
                os.unlink(p)
        present = [p for p in tr.sources() if not absent(p)]
        deleted = tr.source_deleted = not present
""",
        ),
    ),
    _m(
        "verify-forced-on",
        "`[diva] verify` and a custom CA are honoured by the engine",
        CLIENT,
        [
            T_PACING + "test_the_engine_trusts_the_configured_ca_and_nothing_else",
            "tests/test_security.py::test_a_custom_ca_bundle_is_used_by_the_engine",
        ],
        Edit(
            "auth_scheme=diva.auth_scheme, verify=verify,",
            "auth_scheme=diva.auth_scheme, verify=True,",
        ),
    ),
    # -- more of the Reliability section's promise --------------------------------------
    _m(
        "delete-on-source-dropped",
        "ingest asks DIVA to archive with *delete on source*",
        "ingest/rules.py",
        [T_ENGINE + "test_a_file_drop_is_archived_then_deleted_by_diva"],
        Edit(
            "        return self.qos | DELETE_ON_SOURCE if self.delete_on_source else self.qos\n",
            "        return self.qos\n",
        ),
    ),
    _m(
        "uncertain-answer-taken-as-certain",
        "Ask before resubmitting: only a connection that never opened, or DIVA's own "
        "refusal, counts as certainly not received",
        DISPATCH,
        [
            T_FAILSAFE
            + "test_lost_answer_then_forgotten_request_is_completed_not_skipped_nor_resent",
            "tests/test_engine_restart.py::test_killed_right_after_the_archive_call",
        ],
        Edit(
            """\
    if isinstance(error, DivaUnavailable):
        return not never_connected(error)
    return not isinstance(error, DivaRefused | DivaAuthError | DivaStatusTransient)
""",
            "    return False\n",
        ),
    ),
    _m(
        "older-drop-not-superseded",
        "Nothing is lost: a start-up reads each path's newest drop only, so a file there now is "
        "never taken for an older drop's (a new drop takes its path's older final drops out "
        "of those whose files remain)",
        "ingest/batch.py",
        [
            "tests/test_history_bounded.py::test_start_up_reads_only_drops_whose_files_remain",
            "tests/test_history_bounded.py::test_a_new_drop_takes_its_paths_older_final_drops_out",
        ],
        Edit(
            '            self.files_gone(fields["watch"], fields["path"], detail, before=drop_id)',
            "            pass",
        ),
    ),
    _m(
        "settled-read-oldest-last",
        "Nothing is lost: of a path's drops still in the start-up read, the newest is the one "
        "that counts",
        "ingest/ledger.py",
        ["tests/test_history_bounded.py::test_a_new_drop_takes_its_paths_older_final_drops_out"],
        Edit('ORDER BY path, id"', 'ORDER BY path, id DESC"'),
    ),
    _m(
        "files-gone-at-first-miss",
        "Memory follows the present, but a share's blip never turns kept files into new drops: "
        "a final drop's files count as gone only when two sweeps a rescan interval apart miss "
        "them",
        "ingest/engine/intake.py",
        [
            "tests/test_history_bounded.py::test_a_file_missing_for_one_sweep_only_is_not_"
            "forgotten",
        ],
        Edit(
            "            if turn.now - since < self.folders.rescan_seconds:\n",
            "            if False:\n",
        ),
    ),
    _m(
        "sweep-takes-unreadable-for-gone",
        "A file leaves memory only when it is gone: a folder the daemon cannot read hides its "
        "files, which a sweep must not take for gone (seen again, each would be archived a "
        "second time)",
        "ingest/engine/intake.py",
        [
            "tests/test_hostile.py::test_a_settled_file_whose_folder_turns_unreadable_has_not_gone",
        ],
        Edit(
            '        gone = {p for p in missing if absent(f"{watch}/{p}")}\n',
            '        gone = {p for p in missing if not os.path.lexists(f"{watch}/{p}")}\n',
        ),
    ),
    _m(
        "polls-overdue-with-places-left",
        "A burst within max_in_flight is sent whole before the polls take DIVA's turns (an "
        "overdue poll goes first only while drops wait for places)",
        ENGINE,
        [
            T_PACING + "test_a_burst_within_max_in_flight_is_sent_whole_before_any_poll",
        ],
        Edit(
            "            self.dispatcher.short_of_places = self.tracker.short_of_places(now)\n",
            "            self.dispatcher.short_of_places = True\n",
        ),
    ),
    _m(
        "no-login-at-start",
        "The service logs in as it starts: its first drop does not wait for the login",
        ENGINE,
        [T_ENGINE + "test_the_service_logs_in_at_start_and_its_first_drop_uses_that_login"],
        Edit("            self.dispatcher.log_in()\n", "            pass\n"),
    ),
    _m(
        "no-freeze-at-start",
        "A service freezes what its start made: a full collection no longer walks it, "
        "which held a turn for 20-70 ms",
        ENGINE,
        [T_ENGINE + "test_a_service_freezes_what_its_start_made_and_thaws_it_as_it_stops"],
        Edit("        gc.freeze()\n", "        pass\n"),
    ),
    _m(
        "no-freeze-after-the-login",
        "A service freezes again once its login is over: the connection pool it made (and "
        "the 10,000 objects httpcore's import brings) no longer walked by full collections",
        ENGINE,
        [T_ENGINE + "test_a_service_freezes_what_its_start_made_and_thaws_it_as_it_stops"],
        Edit(
            "                if not frozen and self.dispatcher.login_over:\n",
            "                if False:\n",
        ),
    ),
    _m(
        "hints-match-every-event",
        "A new file's events in one turn match the rules once (a realpath each), not once "
        "per event",
        "ingest/engine/intake.py",
        [T_ENGINE + "test_a_new_files_events_in_one_turn_match_the_rules_once"],
        Edit(
            "            if cached[0][1] in self._looks.get(watch, ()):\n",
            "            if False:\n",
        ),
    ),
    _m(
        "response-keeps-its-stream",
        "A read response lets its stream go: left referring to each other, every DIVA call "
        "left some 40 objects for the cycle collector",
        CLIENT,
        ["tests/test_client.py::test_a_call_leaves_nothing_for_the_cycle_collector"],
        Edit("            response.stream = _SPENT\n", "            pass\n"),
    ),
    _m(
        "default-switch-interval",
        "A service's engine thread gets the GIL back within 0.5 ms, not the default 5 ms, "
        "which held turns of 8-15 ms",
        ENGINE,
        [T_ENGINE + "test_a_service_freezes_what_its_start_made_and_thaws_it_as_it_stops"],
        Edit("            sys.setswitchinterval(defaults.ENGINE_GIL_SWITCH_SECONDS)\n", ""),
    ),
    _m(
        "completion-takes-hidden-for-deleted",
        "A file DIVA archived but the daemon cannot look at (its folder's mode, a share's "
        "error) is not deleted: taken for deleted, its path is forgotten and the file, seen "
        "again, archived a second time",
        "ingest/engine/submissions.py",
        [
            "tests/test_hostile.py::test_a_file_hidden_when_its_archive_completes_is_not_"
            "taken_for_deleted",
        ],
        Edit(
            "        present = [p for p in tr.sources() if not absent(p)]\n"
            "        deleted = tr.source_deleted",
            "        present = [p for p in tr.sources() if os.path.lexists(p)]\n"
            "        deleted = tr.source_deleted",
        ),
    ),
    _m(
        "prune-takes-hidden-for-gone",
        "The ledger keeps a final drop while its file is there: pruned as a user a folder's "
        "mode stops, a hidden file is not gone (pruned, its path is forgotten and the file "
        "archived again at the next start)",
        "ingest/prune.py",
        ["tests/test_ledger_prune.py::test_prune_keeps_a_drop_whose_folder_it_cannot_search"],
        Edit(
            '    return absent(os.path.join(watch, *row["path"].split("/")))\n',
            '    return not os.path.lexists(os.path.join(watch, *row["path"].split("/")))\n',
        ),
    ),
    _m(
        "scan-reports-nothing-missing",
        "Memory follows the present: a refused file an operator removes leaves memory and the "
        "start-up read (the scan names the settled paths it did not find)",
        "ingest/watch.py",
        [
            "tests/test_history_bounded.py::test_a_refused_file_an_operator_removes_leaves_"
            "memory_and_the_start_up",
        ],
        Edit(
            "        result.missing = dict(known)  # what the walk does not come across stays "
            "in it\n",
            "        result.missing = {}\n",
        ),
    ),
    _m(
        "ledger-pool-keeps-broken-connections",
        "A crash, an outage or a blip never loses a turn for long: a PostgreSQL connection "
        "that broke (a server restart) is replaced with the idle ones that broke with it",
        "ingest/connections.py",
        ["tests/test_connections.py::test_a_broken_postgresql_connection_costs_one_failed_call"],
        Edit(
            '    return bool(getattr(conn, "broken", False) or getattr(conn, "closed", False))',
            "    return False",
        ),
    ),
    _m(
        "ledger-pool-lends-a-dirty-connection",
        "A turn commits whole or not at all: what a failed transaction wrote is rolled back "
        "before its connection serves anyone else",
        "ingest/connections.py",
        ["tests/test_connections.py::test_a_transaction_commits_whole_or_not_at_all"],
        Edit(
            "                conn.rollback()  # a clean slate for the next user; a no-op when idle",
            "                pass",
        ),
    ),
    _m(
        "vanished-drop-skipped",
        "Ask before resubmitting: a drop whose call may have reached DIVA is reconciled when "
        "its files vanish, never SKIPPED",
        WAITS,
        [
            T_FAILSAFE + "test_an_operator_retry_of_a_drop_diva_archived_meanwhile_completes_it",
            T_FAILSAFE
            + "test_lost_answer_then_forgotten_request_is_completed_not_skipped_nor_resent",
        ],
        Edit(
            "        if tr.uncertain and tr.body is not None and tr.object_name:\n",
            "        if False:\n",
        ),
    ),
    _m(
        "retries-unbounded",
        "Under faults a drop ends FAILED with a reason and its files in place "
        "(max_attempts bounds the tries)",
        SUBMISSIONS,
        [
            T_FAILSAFE
            + "test_an_object_info_route_that_does_not_exist_is_cannot_confirm_never_absent"
        ],
        Edit("        elif count >= self.max_attempts:\n", "        elif False:\n"),
    ),
    _m(
        "abort-retries-unbounded",
        "Under faults a drop ends FAILED with a reason and its files in place "
        "(aborted requests: max_attempts)",
        SUBMISSIONS,
        [T_ENGINE + "test_aborted_requests_are_retried_then_failed_with_the_file_in_place"],
        Edit("            and tr.attempts < self.max_attempts\n", ""),
    ),
    _m(
        "outage-fails-drops",
        "An outage is DIVA's, not the drop's: it pauses submissions and never fails a drop",
        SUBMISSIONS,
        [T_ENGINE + "test_diva_unreachable_fails_no_drop"],
        Edit(
            """\
        outage = isinstance(error, DivaAuthError) or (
            isinstance(error, DivaUnavailable) and never_connected(error)
        )
""",
            "        outage = False\n",
        ),
    ),
    _m(
        "settle-window-ignored",
        "Settle: a drop is complete only when unchanged for its rule's settle window",
        "ingest/settle.py",
        [
            "tests/test_settle.py",
            T_ENGINE + "test_a_growing_file_is_not_submitted_before_it_settles",
        ],
        Edit("self._push(key, entry, now + settle)", "self._push(key, entry, now)", count=2),
        Edit(
            "            deadline = entry.changed_at + entry.settle\n",
            "            deadline = entry.changed_at\n",
        ),
        Edit("        if now - entry.changed_at < entry.settle:\n", "        if False:\n"),
    ),
    _m(
        "skip-archives-anyway",
        "No drop is archived twice: `on_conflict = skip` archives nothing",
        SUBMISSIONS,
        [T_ENGINE + "test_an_object_that_exists_in_diva"],
        Edit('        if tr.on_conflict == "skip":\n', '        if tr.on_conflict == "never":\n'),
        Edit(
            '        elif tr.on_conflict == "suffix":\n',
            '        elif tr.on_conflict in ("suffix", "skip"):\n',
        ),
    ),
    _m(
        "secrets-not-scrubbed",
        "The password and tokens never leak (errors echoing them are scrubbed)",
        CLIENT,
        ["tests/test_client_protocol.py::test_secrets_never_reach_reprs_or_errors"],
        Edit('                text = text.replace(secret, "***")\n', "                pass\n"),
    ),
    _m(
        "password-logged",
        "The password and tokens never leak (not in logs)",
        AUTH,
        ["tests/test_security.py::test_the_password_and_tokens_never_leak"],
        Edit(
            '        log.debug("logged in to DIVA as %s", self._username)\n',
            '        log.info("logged in to DIVA as %s (%s)", self._username, self._password)\n',
        ),
    ),
    # -- guide-profile reconciliation (issue 10, docs/diva-compatibility.md) -------------
    _m(
        "missing-route-is-absent",
        "An answer the client does not understand (a 404 without a DIVA status) is never "
        "evidence that DIVA lacks something",
        CLIENT,
        [
            T_CLIENT_FS + "test_object_info_with_no_route_at_all_raises_never_absent",
            T_FAILSAFE
            + "test_an_object_info_route_that_does_not_exist_is_cannot_confirm_never_absent",
        ],
        Edit(
            """\
                if self._object_info_pinned or i == len(paths) - 1:
                    raise
""",
            """\
                if self._object_info_pinned or i == len(paths) - 1:
                    return None
""",
        ),
    ),
    _m(
        "absent-without-1009",
        '"DIVA does not have it" needs DIVA\'s 1009 (a 1011 or other not-found is not absence)',
        CLIENT,
        [T_CLIENT_FS + "test_1011_on_object_info_is_not_absence"],
        Edit(
            "                if exc.status_code != 1009:\n",
            "                if exc.status_code is None:\n",
        ),
    ),
    _m(
        "no-objects-info-fallback",
        "Object info at the guide's /object/info, falling back to /objects/info on a non-DIVA 404",
        CLIENT,
        [T_CLIENT_FS + "test_object_info_falls_back_on_a_spring_404_and_remembers_the_route"],
        Edit(
            'OBJECT_INFO_PATHS = ("/object/info", "/objects/info")\n',
            'OBJECT_INFO_PATHS = ("/object/info",)\n',
        ),
    ),
    _m(
        "request-list-one-page",
        "Absent needs a request list read to its end (paged with page/size)",
        CLIENT,
        [
            T_CLIENT_FS + "test_a_one_based_list_is_read_past_its_first_page",
            T_FAILSAFE + "test_a_live_request_on_a_later_page_is_adopted",
        ],
        Edit(
            "            if len(items) < self.page_size or len(items) > self.page_size:\n",
            "            if True:\n",
        ),
    ),
    _m(
        "list-cap-read-as-end",
        "A request list that does not end within the page limit is uncertain, not read",
        CLIENT,
        [T_CLIENT_FS + "test_a_list_still_full_after_max_pages_is_unconfirmed"],
        Edit(
            """\
        else:
            raise DivaUnconfirmed(
                f"DIVA's request list did not end within""",
            """\
        if False:
            raise DivaUnconfirmed(
                f"DIVA's request list did not end within""",
        ),
    ),
    _m(
        "filters-trusted",
        "Request-list filters are hints, never trusted: every entry is checked by the client",
        CLIENT,
        [T_CLIENT_FS + "test_filters_are_hints_and_every_entry_is_checked_here"],
        Edit(
            """\
                elif object_name in (None, r.object_name) and (
                    collection is None or r.collection in (None, collection)
                ):
""",
            "                else:\n",
        ),
    ),
    _m(
        "unconfirmed-list-as-absent",
        "Absent needs DIVA's word twice over: a list that would not end is not absence",
        DISPATCH,
        [T_CLIENT_FS + "test_an_unconfirmed_list_and_a_1009_is_unconfirmed"],
        Edit(
            "        requests, unconfirmed = [], exc\n",
            "        requests, unconfirmed = [], None\n",
        ),
    ),
    _m(
        "another-object-taken-as-ours",
        "Reconciliation adopts an object only if its files are ours",
        DISPATCH,
        [T_CLIENT_FS + "test_an_object_is_ours_only_with_our_components"],
        Edit("    if _same_files(obj, components, root, size):\n", "    if True:\n"),
    ),
    _m(
        "finished-request-taken-as-proof",
        "A finished request proves nothing by its name alone: the object decides",
        SUBMISSIONS,
        [T_FAILSAFE + "test_a_request_adopted_by_name_completes_only_if_the_object_is_ours"],
        Edit(
            "        if state is RequestState.COMPLETED and tr.adopted:\n",
            "        if state is RequestState.COMPLETED and tr.adopted and False:\n",
        ),
    ),
    _m(
        "transient-code-rejected",
        "Transient status codes (1002...) are retried within max_attempts, never REJECTED",
        "ingest/protocol.py",
        [
            T_CLIENT_FS + "test_the_issues_transient_codes_are_retried_not_refused",
            T_FAILSAFE + "test_a_transient_status_on_archive_is_retried",
        ],
        Edit("    1002: CodeKind.TRANSIENT,", "    1002: CodeKind.PERMANENT,"),
    ),
    _m(
        "role-refusal-logs-in-again",
        "One login: a 1035 refusal for the role does not log in again",
        AUTH,
        [
            T_CLIENT_FS + "test_a_role_refusal_on_a_fresh_token_is_not_a_new_login",
            T_FAILSAFE + "test_a_role_refusal_is_rejected_without_logging_in_again",
        ],
        Edit(
            "            if role_refusal and not self.expired(used):\n", "            if False:\n"
        ),
    ),
    _m(
        "late-conflict-ignored",
        "A late conflict (an ABORTED request with 1016/1040) is reconciled, then on_conflict",
        SUBMISSIONS,
        [T_FAILSAFE + "test_a_late_conflict_follows_on_conflict"],
        Edit("        if state is RequestState.ABORTED and late:\n", "        if False:\n"),
    ),
    _m(
        "manifest-completeness",
        "A file set is submitted only once every file its manifest lists is there (issue 14)",
        "ingest/members.py",
        [
            "tests/test_filesets.py::test_a_manifest_that_never_completes_fails_naming_what_is_missing",
            "tests/test_filesets.py::test_a_manifest_first_waits_for_its_files_then_archives_exactly_them",
        ],
        # A listed file that is not there is passed over: the set goes without it.
        Edit("            if not hits:\n", "            if False:\n"),
    ),
    _m(
        "fencing-check-removed",
        "A node that lost a folder's lease cannot commit an intent for it (issue 12)",
        "ingest/leases.py",
        [
            "tests/test_leases.py::test_fencing_a_stale_epoch_cannot_write_an_intent",
            "tests/test_leases.py::test_a_fenced_write_in_hand_holds_the_lease_until_it_commits",
            "tests/test_cluster.py::test_a_node_frozen_past_its_lease_submits_nothing_for_the_folders_it_lost",
        ],
        # The lease row is still read (and locked), but a lost folder is let through.
        Edit("    if lost:\n        raise LeaseLost(lost)\n", "    if False:\n        pass\n"),
    ),
)


# -- running ---------------------------------------------------------------------------


@dataclass
class Result:
    """How one mutation fared."""

    name: str
    guarantee: str
    file: str
    tests: list[str]
    status: str = "error"  # killed | survived | timeout | error
    detail: str = ""  # for killed: the first failing test; for error: why
    baseline: str = ""  # "N passed" on the unmutated copy, or what went wrong there
    seconds: float = 0.0
    output_tail: str = field(default="", repr=False)


def project_files(rev: str | None) -> list[str]:
    """The files to copy: tracked and untracked-but-not-ignored (or those of ``rev``)."""
    if rev is not None:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", rev],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return out.splitlines()
    out = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [p for p in out.split("\0") if p and (ROOT / p).is_file()]


def make_pristine(dest: Path, rev: str | None) -> None:
    """Copy the project (never the .venv, .git or caches) to ``dest``."""
    dest.mkdir(parents=True)
    if rev is not None:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", rev],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    for rel in project_files(None):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target, follow_symlinks=False)


def clone(pristine: Path, dest: Path) -> None:
    shutil.copytree(pristine, dest, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))


def apply(mutation: Mutation, tree: Path) -> str | None:
    """Apply the mutation's edits in ``tree``; an error message, or None when applied."""
    path = tree / mutation.file
    if not path.is_file():
        return f"snippet not found: {mutation.file} does not exist"
    source = path.read_text()
    for i, edit in enumerate(mutation.edits, 1):
        found = source.count(edit.old)
        if found != edit.count:
            what = "snippet not found" if found == 0 else "snippet ambiguous"
            first = edit.old.strip().splitlines()[0] if edit.old.strip() else repr(edit.old)
            return (
                f"{what}: edit {i} of {mutation.file} expects {edit.count} occurrence(s) "
                f"of {first!r}, found {found} (the code moved: update the mutation)"
            )
        source = source.replace(edit.old, edit.new)
    if mutation.transform is not None:
        changed = mutation.transform(source)
        if changed == source:
            return (
                f"snippet not found: {mutation.transform.__name__} found nothing to change in "
                f"{mutation.file} (the code moved: update the mutation)"
            )
        source = changed
    try:
        compile(source, str(path), "exec")
    except SyntaxError as exc:
        return f"the mutated {mutation.file} does not compile: {exc}"
    path.write_text(source)
    return None


def environment(tree: Path) -> dict[str, str]:
    """The environment of the tests run in ``tree``: its code first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    return env


def check_imports(tree: Path) -> str | None:
    """Whether a Python started as the tests start daemons (``sys.executable -m``, from
    elsewhere, with the inherited environment) imports ``ingest`` from ``tree``."""
    done = subprocess.run(
        [sys.executable, "-c", "import ingest; print(ingest.__file__)"],
        cwd="/",
        env=environment(tree),
        capture_output=True,
        text=True,
        check=False,
    )
    where = done.stdout.strip()
    if done.returncode != 0 or not where.startswith(str(tree) + os.sep):
        return f"a subprocess imports ingest from {where or done.stderr.strip()!r}, not the copy"
    return None


def run_pytest(
    tree: Path, tests: Sequence[str], timeout: float, *extra: str
) -> tuple[int | None, str, float]:
    """Run pytest on ``tests`` in ``tree``: (exit code or None on timeout, output, seconds)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", *extra, *tests]
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            cmd,
            cwd=tree,
            env=environment(tree),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the daemons it started too
            proc.wait()
        out.seek(0)
        text = out.read().decode(errors="replace")
    return code, text, time.monotonic() - started


_OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+)", re.MULTILINE)


def outcomes(text: str) -> dict[str, str]:
    """Node id -> outcome, from pytest's ``-rA`` summary (a skipped test has no node id
    there: a targeted test that skips is reported as not having run)."""
    result: dict[str, str] = {}
    for outcome, node in _OUTCOME.findall(text):
        if outcome == "SKIPPED":
            continue
        # A test that passed and then failed its teardown has two lines: the ERROR wins.
        if outcome == "ERROR" or node not in result:
            result[node] = outcome
    return result


def selects(spec: str, node: str) -> bool:
    """Whether the pytest spec (a file or a node id) selects ``node``."""
    if "::" not in spec:
        return node.startswith(spec + "::")
    return node == spec or node.startswith(spec + "[")


def baseline(mutations: Sequence[Mutation], pristine: Path, timeout: float) -> dict[str, str]:
    """Run every targeted test once, together, on the unmutated copy; per mutation, "N
    passed" when its tests all passed, else what went wrong."""
    specs = sorted({t for m in mutations for t in m.tests})
    say(f"baseline: {len(specs)} targeted test specs on the unmutated copy ...")
    code, text, seconds = run_pytest(pristine, specs, timeout)
    seen = outcomes(text)
    say(f"baseline: exit {code}, {len(seen)} results in {seconds:.0f} s")
    verdicts: dict[str, str] = {}
    for m in mutations:
        mine = {node: o for node, o in seen.items() if any(selects(s, node) for s in m.tests)}
        missing = [s for s in m.tests if not any(selects(s, node) for node in seen)]
        bad = sorted(node for node, o in mine.items() if o != "PASSED")
        if code is None:
            verdicts[m.name] = f"baseline timed out after {seconds:.0f} s"
        elif missing:
            verdicts[m.name] = f"no such test (or it did not run): {', '.join(missing)}"
        elif bad:
            verdicts[m.name] = "baseline not passing: " + ", ".join(
                f"{node} {mine[node]}" for node in bad
            )
        else:
            verdicts[m.name] = f"{len(mine)} passed"
    if code not in (0, 1):
        say(tail(text, 40))
    return verdicts


def judge(m: Mutation, pristine: Path, scratch: Path, timeout: float, keep: bool) -> Result:
    """Apply one mutation to a fresh copy and run its targeted tests there."""
    result = Result(m.name, m.guarantee, m.file, list(m.tests))
    tree = scratch / m.name
    clone(pristine, tree)
    try:
        problem = apply(m, tree)
        if problem is not None:
            result.detail = problem
            return result
        code, text, result.seconds = run_pytest(tree, m.tests, timeout, "-x")
        result.output_tail = tail(text, 30)
        failed = [node for node, o in outcomes(text).items() if o in ("FAILED", "ERROR")]
        if code is None:
            result.status, result.detail = "timeout", f"no verdict within {timeout:.0f} s"
        elif code == 0:
            result.status, result.detail = "survived", "every targeted test passed"
        elif code in (1, 2) and failed:
            result.status, result.detail = "killed", failed[0]
        elif code in (1, 2):
            # A collection error (the mutant does not import) also fails the tests.
            result.status, result.detail = "killed", f"pytest exit {code}: " + last_line(text)
        else:
            result.detail = f"pytest exit {code}: " + last_line(text)
        return result
    finally:
        if not keep:
            shutil.rmtree(tree, ignore_errors=True)


def tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def last_line(text: str) -> str:
    return tail(text, 1).strip()


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def table(results: Iterable[Result]) -> str:
    """The kill table, in markdown."""
    rows = ["| mutation | guarantee it breaks | result | killed by |", "|---|---|---|---|"]
    for r in results:
        by = f"`{r.detail}`" if r.status == "killed" else r.detail
        rows.append(f"| `{r.name}` | {r.guarantee} | {r.status} | {by} |")
    return "\n".join(rows)


def select(only: Sequence[str]) -> list[Mutation]:
    known = {m.name: m for m in MUTATIONS}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise SystemExit(f"unknown mutation(s): {', '.join(unknown)} (see --list)")
    return [known[n] for n in only] if only else list(MUTATIONS)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mutation check; 0 only when every selected mutation was killed."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.mutants",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run this mutation only (repeatable)",
    )
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=1,
        help="mutations run at once (default 1: the suite is timing-sensitive)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per mutation's test run (default 600)"
    )
    parser.add_argument("--rev", help="copy this commit instead of the working tree")
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the baseline run (trust that the targeted tests pass)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only check that every snippet is found (fast), run no test",
    )
    args = parser.parse_args(argv)
    chosen = select(args.only)

    if args.list:
        for m in chosen:
            print(f"{m.name}\n  breaks: {m.guarantee}\n  in:     {m.file}")
            for t in m.tests:
                print(f"  test:   {t}")
        return 0

    scratch = Path(tempfile.mkdtemp(prefix="ingest-mutants-"))
    scratch.chmod(0o755)  # tests that drop to an unprivileged user read the copy too
    started = time.monotonic()
    try:
        pristine = scratch / "pristine"
        make_pristine(pristine, args.rev)
        say(f"copied {'rev ' + args.rev if args.rev else 'the working tree'} to {pristine}")
        problem = check_imports(pristine)
        if problem is not None:
            say(f"ERROR: {problem}")
            return 2
        # Snippets first: a moved snippet is reported at once, before the slow runs.
        broken = 0
        for m in chosen:
            probe = scratch / "probe"
            clone(pristine, probe)
            problem = apply(m, probe)
            shutil.rmtree(probe)
            if problem is not None:
                broken += 1
                say(f"ERROR {m.name}: {problem}")
        if args.check:
            say(f"{len(chosen) - broken} of {len(chosen)} mutations apply")
            return 0 if not broken else 1
        verdicts = {m.name: "not run (--no-baseline)" for m in chosen}
        if not args.no_baseline:
            verdicts = baseline(chosen, pristine, args.timeout * 3)

        def one(m: Mutation) -> Result:
            if not verdicts[m.name].endswith(("passed", "(--no-baseline)")):
                r = Result(m.name, m.guarantee, m.file, list(m.tests), detail=verdicts[m.name])
            else:
                say(f"{m.name}: running {len(m.tests)} test spec(s) ...")
                r = judge(m, pristine, scratch, args.timeout, args.keep)
            r.baseline = verdicts[m.name]
            level = "" if r.status == "killed" else "  <<<"
            say(f"{m.name}: {r.status.upper()} ({r.seconds:.0f} s) {r.detail}{level}")
            if r.status in ("survived", "error") and r.output_tail:
                say(r.output_tail)
            return r

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(one, chosen))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            say(f"scratch copies kept in {scratch}")

    counts = {
        s: sum(r.status == s for r in results) for s in ("killed", "survived", "timeout", "error")
    }
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    elapsed = time.monotonic() - started
    if args.json:
        payload = {
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "rev": args.rev or "working tree",
            "seconds": round(elapsed),
            "counts": counts,
            "results": [
                {k: v for k, v in asdict(r).items() if k != "output_tail"} for r in results
            ],
        }
        print(json.dumps(payload, indent=2))
        say(table(results))
    else:
        print(table(results))
        print(f"\n{len(results)} mutations: {summary} ({elapsed / 60:.0f} min)")
    for r in results:
        if r.status == "error":
            say(f"ERROR {r.name}: {r.detail}")
    return 0 if counts["killed"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
