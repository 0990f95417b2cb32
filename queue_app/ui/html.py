"""The dashboard's HTML: one layout with a small inline stylesheet, and helpers that escape every value
they are given (html.escape), so that no text from the database or a form reaches a page unescaped."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from starlette.responses import HTMLResponse

REFRESH_S = 5  # how often a page of work in progress reloads (the overview, an unfinished model or sweep)

STYLE = """
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1f2328; background: #f6f8fa; }
header { background: #24292f; padding: .6rem 1rem; display: flex; flex-wrap: wrap; gap: .3rem 1.2rem; }
header a { color: #fff; text-decoration: none; font-weight: 600; }
main { max-width: 1100px; margin: 0 auto; padding: .8rem 1rem 2rem; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: .6rem 1rem;
          margin: .8rem 0; }
h1 { font-size: 1.35rem; margin: .4rem 0; } h2 { font-size: 1.1rem; margin: .3rem 0 .5rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .9rem; width: 100%; }
th, td { padding: .25rem .5rem; border-bottom: 1px solid #eaeef2; text-align: left; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.wrap { white-space: normal; min-width: 14rem; }
svg { width: 100%; height: auto; display: block; }
.two { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 24rem), 1fr)); gap: 0 .8rem; }
.two > section { margin: .4rem 0; }
.chart { overflow-x: auto; }
.error { background: #ffebe9; border: 1px solid #ff8182; padding: .5rem .8rem; border-radius: 6px; }
.notice { background: #ddf4ff; border: 1px solid #54aeff; padding: .5rem .8rem; border-radius: 6px; }
.muted { color: #57606a; }
.flag-decayed { background: #ffebe9; color: #d1242f; font-weight: 600; padding: 0 .3rem; border-radius: 4px; }
.status-completed { color: #1a7f37; } .status-failed { color: #d1242f; } .status-running { color: #9a6700; }
form.inline { display: inline-block; margin: 0 .5rem .5rem 0; }
form.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(15rem, 1fr)); gap: .5rem 1rem; }
form.grid label { display: flex; flex-direction: column; font-size: .85rem; }
form.filters { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; }
form.filters label { display: flex; flex-direction: column; font-size: .85rem; }
input, select, textarea, button { font: inherit; padding: .3rem .4rem; max-width: 100%; }
button { cursor: pointer; border: 1px solid #1f883d; background: #1f883d; color: #fff; border-radius: 6px; }
button.danger { background: #cf222e; border-color: #cf222e; }
progress { width: 16rem; max-width: 100%; }
code { font-size: .85rem; word-break: break-all; }
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def number(value: Any, digits: int = 4) -> str:
    """How every metric is shown: `digits` decimals, or a dash when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value else "-"


def day(value: Any) -> str:
    return f"{value:%Y-%m-%d}" if isinstance(value, datetime) else esc(value)


def compact(value: Any) -> str:
    """A JSON value on one line (a spec field, a combination), escaped."""
    return esc(value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str))


def link(href: str, text: Any) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def url(path: str, **params: Any) -> str:
    query = urlencode({key: value for key, value in params.items() if value not in (None, "")})
    return f"{path}?{query}" if query else path


def status(value: str) -> str:
    return f'<span class="status-{esc(value)}">{esc(value)}</span>'


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = (), id_: str = ""
) -> str:
    """Cells are HTML already (escape them with the helpers); columns in `numeric` are right-aligned."""
    right = set(numeric)
    head = "".join(f"<th{' class=num' if i in right else ''}>{h}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i in right else ''}>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="muted">none</td></tr>'
    ident = f' id="{esc(id_)}"' if id_ else ""
    return (
        f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    )


def section(title: str, body: str, id_: str = "") -> str:
    ident = f' id="{esc(id_)}"' if id_ else ""
    return f"<section{ident}><h2>{esc(title)}</h2>{body}</section>"


def chart(svg: str | None, id_: str, empty: str) -> str:
    """An inline SVG drawn by queue_app.ui.charts (its own markup, from numbers only), or a note."""
    if svg is None:
        return f'<p class="muted" id="{esc(id_)}">{esc(empty)}</p>'
    return f'<div class="chart" id="{esc(id_)}">{svg}</div>'


# Reload every `data-refresh` seconds, unless something was typed into a form on the page (a reload
# would throw it away); without JavaScript, a plain meta refresh.
RELOAD_SCRIPT = (
    "<script data-refresh={seconds}>(() => {{ let typed = false;"
    ' document.addEventListener("input", () => {{ typed = true; }});'
    " setInterval(() => {{ if (!typed) location.reload(); }}, {seconds} * 1000); }})();</script>"
    '<noscript><meta http-equiv="refresh" content="{seconds}"></noscript>'
)


def page(title: str, body: str, refresh_s: int | None = None, status_code: int = 200) -> HTMLResponse:
    refresh = RELOAD_SCRIPT.format(seconds=int(refresh_s)) if refresh_s else ""
    nav = "".join(
        link(href, text)
        for href, text in (
            ("/ui", "sfq"),
            ("/ui/models", "Models"),
            ("/ui/strategies", "Strategies"),
            ("/ui/submit", "Submit"),
        )
    )
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{refresh}<title>{esc(title)} · sfq</title><style>{STYLE}</style></head>"
        f"<body><header>{nav}</header><main><h1>{esc(title)}</h1>{body}</main></body></html>"
    )
    return HTMLResponse(document, status_code=status_code)


def not_found(message: str) -> HTMLResponse:
    return page("Not found", f'<p class="error" id="message">{esc(message)}</p>', status_code=404)


def progress(value: dict[str, Any] | None) -> str:
    """A training's live progress: a bar and its phase."""
    if not value:
        return "-"
    fraction = value.get("fraction")
    bar = (
        f'<progress max="1" value="{esc(fraction)}"></progress> ' if isinstance(fraction, int | float) else ""
    )
    return f"{bar}{esc(value.get('phase', ''))}"


def message(text: str) -> str:
    """Why an action was refused, at the top of the page it re-renders."""
    return f'<p class="error" id="message">{esc(text)}</p>' if text else ""


TOKENS_NOTE = (
    '<p class="notice">This API has tokens configured: a browser form cannot send the '
    "<code>Authorization: Bearer</code> header, so these actions are refused here. Use the HTTP API or "
    "<code>sfq</code> (docs/dashboard.md).</p>"
)
