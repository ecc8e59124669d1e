"""The status page: plain server-rendered HTML, one section per question an operator asks.

It works with scripts off (reload to refresh). With scripts on, a small inline script asks
``/api/page`` every few seconds for the sections, rendered here too, and swaps them in:
no front-end build, no library, and one renderer for both paths. Every value from the
ledger or the filesystem is escaped; the page holds no secret (the token, if any, is
never written into it: the browser sends the login cookie).
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .. import defaults

__all__ = ["SECTIONS", "login_page", "page", "sections"]

e = html.escape


def _when(iso: str | None) -> str:
    if not iso:
        return ""
    return e(iso.replace("T", " ")[:19] + " UTC")


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="none">{e(empty)}</p>'
    cols = "".join(f"<th>{e(h)}</th>" for h in head)
    return f"<table><thead><tr>{cols}</tr></thead><tbody>{body}</tbody></table>"


def _state(state: str | None) -> str:
    s = e(state or "")
    return f'<span class="st st-{s.lower()}">{s}</span>'


def _summary(d: Mapping[str, Any]) -> str:
    doc, health = d["status"], d["health"]
    ok = doc["healthy"] and health["ok"]
    verdict = "healthy" if ok else "needs attention"
    problems = [*health["reasons"], *doc["problems"]]
    items = "".join(f"<li>{e(p)}</li>" for p in problems)
    diva = health["diva"]
    reach = {True: "reachable", False: "UNREACHABLE", None: "not asked yet"}[diva["reachable"]]
    engine = health["engine"]
    since = engine["seconds_since_turn"]
    turned = "not yet" if since is None else f"{since:.1f} s ago"
    return (
        f'<p class="verdict {"ok" if ok else "bad"}">{e(verdict)}: {doc["total"]:,} drops in '
        f"the ledger</p>" + (f'<ul class="problems">{items}</ul>' if items else "") + "<p>"
        f"engine: last turn {e(turned)} · ready queue {engine['ready_queue']:,} · "
        f"in flight {engine['in_flight']:,} · ledger "
        f"{'writable' if health['ledger']['writable'] else 'NOT WRITABLE'} · DIVA "
        f'<span class="{"ok" if diva["reachable"] is not False else "bad"}">{e(reach)}</span>'
        f" ({e(diva['detail'])})</p>"
    )


def _folders(d: Mapping[str, Any]) -> str:
    scans = d["last_scans"]
    rows = [
        [
            e(f["watch"]), e(f["observer"]),
            f'<span class="h-{e(f["health"])}">{e(f["health"])}</span>',
            e(f["detail"]), _when(scans.get(f["watch"])),
        ]
        for f in d["health"]["folders"]
    ]  # fmt: skip
    return _table(["watch folder", "observer", "health", "why", "last scan"], rows, "no folders")


def _counts(d: Mapping[str, Any]) -> str:
    doc = d["status"]
    states = [s for s, n in doc["states"].items() if n]
    if not doc["rules"]:
        return '<p class="none">no drops yet</p>'
    rows = [
        [e(rule), *(f"{counts.get(s, 0):,}" for s in states), f"{sum(counts.values()):,}"]
        for rule, counts in doc["rules"].items()
    ]
    rows.append(["<b>all</b>", *(f"<b>{doc['states'][s]:,}</b>" for s in states),
                 f"<b>{doc['total']:,}</b>"])  # fmt: skip
    return _table(["rule", *states, "total"], rows, "no drops yet")


def _progress(value: int | None) -> str:
    if value is None:
        return ""
    pct = max(0, min(100, int(value)))
    return f'<span class="bar"><span style="width:{pct}%"></span></span> {pct}%'


def _flight(d: Mapping[str, Any]) -> str:
    doc = d["status"]
    rows = [
        [
            str(r["id"]), e(r["rule"]), e(r["object_name"] or r["path"]),
            e(str(r["request_id"] or "")), e(r["diva_state"] or r["state"]),
            _progress(r["progress"]), _when(r["submitted_at"]),
        ]
        for r in doc["in_flight"][: defaults.HTTP_PAGE_ROWS]
    ]  # fmt: skip
    head = f"<p>{doc['in_flight_total']:,} request(s) at DIVA</p>"
    table = _table(
        ["id", "rule", "object", "request", "DIVA state", "progress", "submitted"],
        rows, "nothing in flight",
    )  # fmt: skip
    return head + table


def _waiting(d: Mapping[str, Any]) -> str:
    w = d["status"]["oldest_waiting"]
    if w is None:
        return '<p class="none">nothing waits</p>'
    return (
        f"<p>#{w['id']} {e(w['rule'])} <code>{e(w['path'])}</code> ({_state(w['state'])}), "
        f"detected {_when(w['detected_at'])}: {e(w['reason'])}</p>"
    )


def _why(r: Mapping[str, Any]) -> str:
    parts = [str(p) for p in (r["error"], r["status_name"], r["abort_reason"]) if p]
    return e("; ".join(dict.fromkeys(parts)))


def _failures(d: Mapping[str, Any]) -> str:
    rows = [
        [
            str(r["id"]), _state(r["state"]), e(r["rule"]), e(r["watch"]), e(r["path"]),
            e(str(r["status_code"] or "")), _why(r), _when(r["finished_at"]),
        ]
        for r in d["failures"]
    ]  # fmt: skip
    return _table(
        ["id", "state", "rule", "watch folder", "path", "DIVA code", "reason", "finished"],
        rows, "no failures or refusals",
    )  # fmt: skip


def _latest(d: Mapping[str, Any]) -> str:
    rows = [
        [
            str(r["id"]), e(r["watch"]), e(r["path"]), e(r["rule"]), _state(r["state"]),
            e(r["object_name"] or ""), _when(r["updated_at"]),
        ]
        for r in d["latest"]
    ]  # fmt: skip
    return _table(
        ["id", "watch folder", "path", "rule", "state", "object", "when"], rows, "no drops yet"
    )


def _chart(d: Mapping[str, Any]) -> str:
    counts: list[int] = d["hourly"]
    first: int = d["hourly_first"]
    top = max(counts) or 1
    width, height, gap = 24, 100, 4
    bars, labels = [], []
    for i, n in enumerate(counts):
        hour = time.strftime("%H:00", time.gmtime(first + i * 3600))
        h = round(n / top * height)
        x = i * (width + gap)
        bars.append(
            f'<rect x="{x}" y="{height - h}" width="{width}" height="{max(h, 0)}">'
            f"<title>{hour} UTC: {n:,} completed</title></rect>"
        )
        if i % 6 == 0 or i == len(counts) - 1:
            labels.append(f'<text x="{x}" y="{height + 14}">{hour}</text>')
    total = sum(counts)
    w = len(counts) * (width + gap)
    return (
        f"<p>{total:,} completed in the last 24 h (most in one hour: {max(counts):,})</p>"
        f'<svg class="chart" viewBox="0 0 {w} {height + 18}" role="img" '
        f'aria-label="drops completed per hour, last 24 hours">{"".join(bars)}{"".join(labels)}'
        "</svg>"
    )


#: the page's sections: id -> (title, renderer); /api/page answers the same ids
SECTIONS: dict[str, tuple[str, Callable[[Mapping[str, Any]], str]]] = {
    "summary": ("ingest", _summary),
    "folders": ("Watch folders", _folders),
    "counts": ("Drops by rule and state", _counts),
    "flight": ("Requests in flight", _flight),
    "waiting": ("Oldest waiting drop", _waiting),
    "failures": ("Latest failures and refusals", _failures),
    "latest": ("Latest drops", _latest),
    "chart": ("Completed per hour", _chart),
}


def sections(data: Mapping[str, Any]) -> dict[str, str]:
    """Each section's HTML, by id (what ``/api/page`` answers)."""
    return {key: render(data) for key, (_title, render) in SECTIONS.items()}


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .3em}
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #ddd}
th{background:#f4f4f4}.none{color:#777}.verdict{font-size:1.2em;font-weight:bold}
.ok{color:#176b2c}.bad,.h-down,.h-paused,.st-failed,.st-rejected{color:#b00020;font-weight:bold}
.st-completed{color:#176b2c}.problems{color:#b00020}code{background:#f4f4f4}
.bar{display:inline-block;width:80px;height:8px;background:#eee;vertical-align:middle}
.bar span{display:block;height:8px;background:#2b6cb0}
.chart{width:700px;max-width:100%}.chart rect{fill:#2b6cb0}.chart text{font-size:10px}
#stamp{color:#777}
"""

_SCRIPT = """
(function(){
  var stamp=document.getElementById('stamp');
  function refresh(){
    fetch('api/page',{credentials:'same-origin',cache:'no-store'})
      .then(function(r){if(!r.ok)throw new Error('HTTP '+r.status);return r.json();})
      .then(function(doc){
        Object.keys(doc.sections).forEach(function(id){
          var el=document.getElementById(id);if(el)el.innerHTML=doc.sections[id];});
        stamp.textContent='updated '+new Date().toLocaleTimeString();})
      .catch(function(err){stamp.textContent='refresh failed: '+err.message;});
  }
  setInterval(refresh,%d);
})();
"""


def page(data: Mapping[str, Any], nonce: str) -> str:
    """The whole page; its script runs only under the response's CSP ``nonce``."""
    parts = []
    for key, html_ in sections(data).items():
        title = SECTIONS[key][0]
        tag = "h1" if key == "summary" else "h2"
        parts.append(f'<section><{tag}>{e(title)}</{tag}><div id="{key}">{html_}</div></section>')
    refresh_ms = int(defaults.HTTP_REFRESH_SECONDS * 1000)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>ingest status</title><style>{_STYLE}</style></head><body>"
        + "".join(parts)
        + '<p id="stamp">rendered by the server; reload to refresh</p>'
        f'<script nonce="{e(nonce)}">{_SCRIPT % refresh_ms}</script></body></html>'
    )


def login_page(failed: bool) -> str:
    """The token form (a non-loopback endpoint); it never holds the token itself."""
    note = '<p class="bad">wrong token</p>' if failed else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>ingest: log in</title><style>{_STYLE}</style></head><body>"
        f"<h1>ingest</h1>{note}"
        '<form method="post" action="login"><label>Access token ([http] token) '
        '<input type="password" name="token" autocomplete="current-password" autofocus>'
        '</label> <button type="submit">Log in</button></form></body></html>'
    )
