"""Every default value ingest uses, in one place, each with its unit.

The service config (``ingest.config``), the rules (``ingest.rules``) and the docs read
them from here, so a default is changed once. Units are in the name (``_SECONDS``,
``_CHARS``) or in the comment.
"""

from __future__ import annotations

from typing import Final

# --- service config: where it is -------------------------------------------------------
#: environment variable naming the service config when ``--config`` is not given
CONFIG_ENV = "INGEST_CONFIG"
#: the service config looked for in the current folder when neither flag nor env is given
CONFIG_FILE_NAME = "ingest.toml"

# --- [diva] -----------------------------------------------------------------------------
#: path prefix of the data service (login, users) under the gateway URL
DIVA_DATA_PATH = "/dataservice"
#: path prefix of the manager (requests, objects) under the gateway URL
DIVA_MANAGER_PATH = "/manager"
#: how the token is sent: "raw" (``Authorization: <token>``, as the guide's sample) or "bearer"
DIVA_AUTH_SCHEME = "raw"
#: TLS verification of DIVA's certificate: on unless the config says otherwise
DIVA_VERIFY = True
#: timeout of one HTTP call to DIVA, seconds
DIVA_TIMEOUT_SECONDS = 30.0
#: how often each in-flight request is polled, seconds (the API guide: no more often than 10 s)
DIVA_POLL_SECONDS = 10.0
#: below this poll interval the config loader warns (the guide's rule), seconds
DIVA_POLL_SECONDS_ADVISED_MIN = 10.0
#: the smallest poll interval accepted at all, seconds
DIVA_POLL_SECONDS_MIN = 1.0
#: archive requests submitted and not finished, at most (requests)
DIVA_MAX_IN_FLIGHT = 50
#: attempts per drop for transient failures before it is FAILED (attempts)
DIVA_MAX_ATTEMPTS = 5
#: a DIVA token's session timeout as the guide gives it (minutes; DIVA allows 1..10080)
DIVA_SESSION_MINUTES = 1440
#: a request waiting (queued, for resources, for an operator) longer than this is stuck
DIVA_STUCK_AFTER_SECONDS = 4 * 3600.0
#: ``GET /requests`` is read in pages of this many requests
DIVA_LIST_PAGE_SIZE = 100
#: ...and at most this many pages; a list that goes on is "cannot confirm", never "absent"
DIVA_LIST_MAX_PAGES = 50
#: requests submitted this long before a drop's intent cannot be its own (clock skew)
DIVA_LIST_MARGIN_SECONDS = 3600.0

# --- [ledger] ---------------------------------------------------------------------------
#: SQLite ledger; a relative path is resolved against the config file's folder
LEDGER_URL = "sqlite:///ingest.db"
#: [ledger] keep_days: the daemon's first prune this long after it starts, then one per period
LEDGER_PRUNE_FIRST_SECONDS = 60.0
LEDGER_PRUNE_EVERY_SECONDS = 86_400.0
#: drop_counts (what `ingest status` sums): the engine folds its oldest rows this often,
#: at most this many at a time, once at least this many have piled up
LEDGER_COUNTS_FOLD_SECONDS = 10.0
LEDGER_COUNTS_FOLD_ROWS = 20_000
LEDGER_COUNTS_FOLD_LEAST = 1_000
#: [cluster] lease_seconds: how long a node holds a watch folder without renewing
CLUSTER_LEASE_SECONDS = 15.0

# --- [rules] ----------------------------------------------------------------------------
#: rule files or folders of ``*.toml``; relative paths: to the config file's folder
RULES_PATHS: tuple[str, ...] = ("rules",)
#: hold the files already present that a rule edit newly matches until ``ingest rules accept``
RULES_CONFIRM_NEW_MATCHES = False

# --- [engine] ---------------------------------------------------------------------------
#: full rescan of every watch folder, catching lost events, seconds
ENGINE_RESCAN_SECONDS = 60.0
#: how often rule files are checked for edits (hot reload), seconds
ENGINE_RELOAD_SECONDS = 2.0
#: how often a polled folder (network share, or a native watcher that is down) is scanned, seconds
ENGINE_WATCH_POLL_SECONDS = 5.0
#: a watch folder that suddenly reads empty is believed only after this long, seconds
ENGINE_BLIP_GRACE_SECONDS = 30.0
#: after a failed ledger write, wait this long before trying again, seconds
ENGINE_LEDGER_RETRY_SECONDS = 5.0
#: hints and answers handled in one turn (one ledger transaction) at most
ENGINE_MAX_EVENTS_PER_TURN = 20_000
#: archive calls (and the questions before one) started in one turn at most: a burst's
#: first calls leave once the first few intents commit, not after all of them; the next
#: turn follows at once with the next few, while those calls are at DIVA
ENGINE_STARTS_PER_TURN = 64
#: paths whose drop the engine remembers between events (cleared when full or on reload)
ENGINE_HINT_CACHE_SIZE = 100_000
#: on SIGTERM, wait this long for DIVA calls already made to answer, seconds
ENGINE_STOP_GRACE_SECONDS = 10.0
#: a service's GIL switch interval (the interpreter's default is 0.005), seconds: the
#: engine thread gives the GIL up at every stat and ledger call, then waits for it up to
#: this long while a DIVA or watcher thread runs
ENGINE_GIL_SWITCH_SECONDS = 0.0005
#: first wait after a transient failure of one drop, doubled each attempt, seconds
ENGINE_RETRY_BACKOFF_SECONDS = 5.0
#: longest wait between two attempts of one drop, seconds
ENGINE_RETRY_BACKOFF_MAX_SECONDS = 300.0
#: first pause of all submissions while DIVA is unreachable, doubled each time, seconds
ENGINE_OUTAGE_BACKOFF_SECONDS = 1.0
#: longest pause between two tries to reach DIVA again, seconds
ENGINE_OUTAGE_BACKOFF_MAX_SECONDS = 15.0
#: first hold of all submissions once DIVA says its queue is full (1032), doubled each
#: time it says so again before taking one, seconds
ENGINE_BUSY_BACKOFF_SECONDS = 2.0
#: longest hold of all submissions while DIVA's queue stays full, seconds
ENGINE_BUSY_BACKOFF_MAX_SECONDS = 60.0
#: every backoff wait is drawn within +/- this fraction of its value (a fraction, 0..1)
ENGINE_BACKOFF_JITTER_FRACTION = 0.2
#: first wait before a native watcher that failed is started again, doubled each time, seconds
ENGINE_WATCHER_RETRY_SECONDS = 2.0
#: longest wait between two tries to start a failed native watcher again, seconds
ENGINE_WATCHER_RETRY_MAX_SECONDS = 300.0
#: a watch folder's unchanged health is written to the ledger at most this often, seconds
ENGINE_WATCHER_REPORT_SECONDS = 10.0
#: a watch folder that looks away (gone, empty, remounted) is looked at again after, seconds
ENGINE_AWAY_RECHECK_SECONDS = 1.0
#: the engine's loop wakes at least this often, even with nothing due, seconds
ENGINE_WAKE_SECONDS = 1.0
#: ``ingest run --until-idle``: nothing seen or answered for this long (or for the longest
#: settle window, when longer) before it exits, seconds
ENGINE_IDLE_QUIET_SECONDS = 0.5
#: DIVA calls made at once: the worker pool's threads (started as calls need them), each
#: keeping one of the client's keep-alive connections busy (httpx keeps up to 20 alive)
ENGINE_WORKERS = 16
#: a poll kept waiting this long by archive calls goes out next, seconds: starved polls
#: keep their drops' places at DIVA (max_in_flight), which then stalls submissions too
ENGINE_POLL_OVERDUE_SECONDS = 1.0
#: rules' checksums read at most this fast, MB/s (0: no limit): a drop being hashed
#: should leave the disk to the copies still landing
ENGINE_HASH_MB_PER_SECOND = 0.0
#: a drop this large (bytes) shows its hashing progress in ``ingest status``...
HASH_PROGRESS_MIN_BYTES = 256 * 1024 * 1024
#: ...written to its ledger row this often, seconds
HASH_PROGRESS_SECONDS = 2.0
#: the ready queue ranks a drop whose rule leaves its priority to DIVA (-1) as this one,
#: DIVA's usual default (a priority, 1..100)
ENGINE_QUEUE_DEFAULT_PRIORITY = 50
#: a live request submitted this long before a drop's first intent is not the drop's own
#: (room for the clocks of DIVA and this host to disagree), seconds
ENGINE_OWN_REQUEST_SKEW_SECONDS = 120.0

# --- [http] ---------------------------------------------------------------------------
#: what the docs and messages suggest for ``[http] listen``: loopback, the usual port
HTTP_LISTEN_EXAMPLE = "127.0.0.1:9180"
#: the shortest ``[http] token`` accepted, characters
HTTP_TOKEN_MIN_CHARS = 16
#: ``/healthz`` answers 503 when the engine loop has not turned for this long, seconds
HTTP_HEALTH_STALL_SECONDS = 10.0
#: the status page's script refreshes its parts this often, seconds
HTTP_REFRESH_SECONDS = 3.0
#: ``/api/drops`` without ``limit`` gives this many drops, and never more than the max
HTTP_DROPS_LIMIT = 100
HTTP_DROPS_MAX_LIMIT = 10_000
#: drops listed in each section of the status page (latest, failures, in flight)
HTTP_PAGE_ROWS = 15
#: how long ``ingest run`` waits for the HTTP server's threads on shutdown, seconds
HTTP_STOP_SECONDS = 5.0

# --- [notify] ---------------------------------------------------------------------------
#: what a notification is sent for (``[notify] events``): every kind
NOTIFY_EVENTS = ("failed", "rejected", "folder", "stuck", "outage", "rules", "checksum")
#: what happened in this window goes out as one message, seconds (0: each look's news at once)
NOTIFY_DIGEST_SECONDS = 60.0
#: DIVA unreachable this long before it is worth a message, seconds
NOTIFY_OUTAGE_AFTER_SECONDS = 300.0
#: how often the notifier looks at the ledger and the engine's snapshot, seconds
NOTIFY_LOOK_SECONDS = 1.0
#: tries of one message to one URL before it is dropped (the first and its retries)
NOTIFY_ATTEMPTS = 4
#: the wait before the first retry, seconds; doubled before each next one
NOTIFY_RETRY_SECONDS = 1.0
#: messages waiting to be sent, at most (a receiver down for long loses the oldest)
NOTIFY_QUEUE_MESSAGES = 100
#: drops named in one message, at most (the rest as a count and a command)
NOTIFY_DROPS_SHOWN = 50
#: how long ``ingest run`` gives the last digest to go out on shutdown, seconds
NOTIFY_STOP_SECONDS = 10.0

# --- a rule's optional keys -------------------------------------------------------------
#: "file": each file is a drop; "folder": each top-level folder under `watch` is a drop;
#: "fileset": each manifest (``manifest``) is a drop made of the files it lists
RULE_MODE: Final = "file"
#: a drop is complete when unchanged (size, mtime) this long, seconds
RULE_SETTLE_SECONDS = 30.0
#: no marker: settling alone completes a drop
RULE_READY_MARKER = ""
#: the object name: the file's (or folder's) full name, unique within a folder
RULE_OBJECT_NAME = "{name}"
#: DIVA's default quality of service (0)
RULE_QOS = "default"
#: OR delete-on-source (0x100) into qos: DIVA removes the source once it is archived
RULE_DELETE_ON_SOURCE = True
#: -1: DIVA's default priority
RULE_PRIORITY = -1
#: no sidecar: a drop's templates have no {meta.*} fields
RULE_SIDECAR = ""
#: how long a settled drop waits for its sidecar before going on without it (or failing)
RULE_SIDECAR_WAIT_SECONDS = 60.0
#: a drop whose sidecar never comes goes ahead without its fields
RULE_SIDECAR_REQUIRED = False
#: the sidecar is archived with the drop, as a component of the same object
RULE_ARCHIVE_SIDECAR = True
#: no checksums (or "md5", "sha256", "xxh64")
RULE_CHECKSUM = ""
#: a sidecar is read once left alone this long (or the rule's settle time, if shorter), seconds
SIDECAR_SETTLE_MAX_SECONDS = 2.0
#: how often a drop waiting for its sidecar looks for it again, seconds (at most)
SIDECAR_RECHECK_SECONDS = 1.0
#: empty: the source server's default root
RULE_FILE_PATH_ROOT = ""
RULE_COMMENTS = ""
RULE_OPTIONS = ""
#: what to do when the object exists in DIVA: "fail" | "skip" | "suffix"
RULE_ON_CONFLICT: Final = "fail"
#: how the engine watches: "auto" (native unless a network filesystem) | "native" | "polling"
RULE_OBSERVER: Final = "auto"
RULE_ENABLED = True
#: globs are case-sensitive unless the rule says otherwise
RULE_IGNORE_CASE = False
RULE_DESCRIPTION = ""
#: longest rule name, characters (letters, digits, '.', '_', '-')
RULE_NAME_MAX_CHARS = 64
#: fileset mode: the glob of the manifests (DFM ``.mdf`` files), one drop each
RULE_MANIFEST = ""
#: "primary": a manifest's values override the rule's (DFM's default); "secondary": the rule's win
RULE_MANIFEST_PRIORITY: Final = "primary"
#: archive the manifest itself with its files
RULE_ARCHIVE_MANIFEST = False
#: a manifest whose files are still missing this long after it was written is FAILED, seconds
#: (DFM's ``incompleteThreshold``)
RULE_INCOMPLETE_AFTER_SECONDS = 86400.0
#: a manifest larger than this is refused unread, bytes
MANIFEST_MAX_BYTES = 4 * 1024 * 1024
#: entries (paths or globs) in one manifest's file list, at most
MANIFEST_MAX_FILES = 100_000
#: missing files a FAILED manifest's message names, at most (the rest as a count)
MANIFEST_MISSING_SHOWN = 20
#: how often a settled manifest looks again for the files it still lacks, seconds (at least)
MANIFEST_RECHECK_SECONDS = 1.0
#: ``on_conflict = "suffix"`` tries ``name_2`` up to ``name_<this + 1>``, then fails (names)
RULE_SUFFIX_MAX_TRIES = 99

# --- DIVA's limits on names (legacy API) ------------------------------------------------
#: longest object name DIVA accepts, characters
OBJECT_NAME_MAX_CHARS = 192
#: longest collection (category) name DIVA accepts, characters
COLLECTION_MAX_CHARS = 96

# --- DIVA's ranges ----------------------------------------------------------------------
#: a request's priority, when not DIVA's default (-1): from this to the max (a priority)
DIVA_PRIORITY_MIN = 1
DIVA_PRIORITY_MAX = 100
#: the session timeout DIVA accepts for a token, minutes
DIVA_SESSION_MINUTES_MIN = 1
DIVA_SESSION_MINUTES_MAX = 10080

#: files never counted as drops or members, whatever the rule: hidden, temporary,
#: partial downloads, Office lock files, desktop litter. Matched against every path
#: component's name below the watch folder.
BUILTIN_IGNORES: tuple[str, ...] = (
    ".*",
    "*.part",
    "*.tmp",
    "*.crdownload",
    "~$*",
    "Thumbs.db",
    ".DS_Store",
    "._*",
)
