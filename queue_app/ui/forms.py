"""HTML forms of the dashboard: a training request's fields (queue_app.spec.FIELDS) as inputs, and back
from a posted form to the JSON the API would have received. Validation stays the database's: a value that
does not parse is passed on as text, so the message is the one the API gives for it. A form the dashboard
refuses itself (too large, cross-site, a JSON field that is not JSON) raises Rejected."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request

from queue_app.errors import Rejected
from queue_app.spec import FIELDS, Field
from queue_app.ui.html import esc

MAX_FORM_BYTES = 1 << 20  # as the API's bodies
TEXTAREAS = ("object", "array")  # JSON typed into a textarea
LISTS = ("string-array", "number-array")  # comma- or space-separated
# What a child may change of its parent (the evolve form): not its symbol, lineage, run or queue settings.
EVOLVE_FIELDS = tuple(
    f
    for f in FIELDS
    if f.name not in ("symbol", "parent_model_id", "retrain_of", "run", "priority", "timeout_s")
)


async def read(request: Request) -> dict[str, str]:
    """The posted urlencoded form (no multipart: the forms here send none). A form posted from another
    site is refused: without tokens the API is open, so a page elsewhere must not drive it."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise Rejected("cross-site form posts are refused")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Rejected(f"form larger than {MAX_FORM_BYTES} bytes")
    try:
        return dict(parse_qsl(body.decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        raise Rejected("form is not UTF-8") from None


def _scalar(text: str) -> Any:
    """An integer or number when the text is one, else the text (the database names the problem)."""
    if re.fullmatch(r"[+-]?[0-9]{1,18}", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def value(field: Field, text: str) -> Any:
    """A form field's text as the API's JSON value."""
    text = text.strip()
    if field.json_type in TEXTAREAS:
        try:
            return json.loads(text)
        except ValueError:
            raise Rejected(f"{field.name}: must be JSON, got {text!r}") from None
    if field.json_type in LISTS:
        items = [item for item in re.split(r"[,\s]+", text) if item]
        return [_scalar(item) for item in items] if field.json_type == "number-array" else items
    if field.json_type == "integer":
        return _scalar(text)
    return text


def request_from(form: dict[str, str], fields: tuple[Field, ...] = FIELDS) -> dict[str, Any]:
    """The fields filled in (an empty one takes its default, as when left out of the JSON)."""
    return {f.name: value(f, form[f.name]) for f in fields if form.get(f.name, "").strip()}


def inputs(fields: tuple[Field, ...], values: dict[str, str]) -> str:
    """One labelled input per field, prefilled with what was posted."""
    parts = []
    for f in fields:
        current = esc(values.get(f.name, ""))
        name = esc(f.name)
        if f.json_type in TEXTAREAS:
            control = f'<textarea name="{name}" rows="2" placeholder="{esc(f.help)}">{current}</textarea>'
        else:
            numeric = ' inputmode="numeric"' if f.json_type == "integer" else ""
            control = f'<input name="{name}" value="{current}"{numeric} placeholder="{esc(f.help)}">'
        parts.append(f"<label>{name}{control}</label>")
    return "".join(parts)
