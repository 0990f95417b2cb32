"""sfq's errors: one root, subclasses by meaning. Library code raises these; each front end maps them in
one place (the API's handler table in `queue_app.api.app`, the CLI's exit status in `queue_app.cli`).
Database errors become these in `queue_app.gateway`, from their SQLSTATE, once."""

from __future__ import annotations


class SfqError(Exception):
    """Something a user can act on; the message says what is wrong, `detail` (optional) the particulars
    (the database's own words, a limit)."""

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.message}: {self.detail}" if self.detail else self.message


class Rejected(SfqError):
    """Bad input (a request field, a query parameter, a form, a file, a setting): nothing was changed.
    `field` names the culprit when there is one."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field

    def __str__(self) -> str:
        return self.message


class Malformed(Rejected):
    """A body that is not what the protocol expects (not JSON, nested too deeply): HTTP 400."""

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail


class TooLarge(Rejected):
    """A body over the size limit: HTTP 413."""

    def __init__(self, message: str, limit: int):
        super().__init__(message)
        self.limit = limit


class BadRows(Rejected):
    """A file with bad rows: nothing imported; `problems` lists each one (the first 20 in the message)."""

    def __init__(self, problems: list[str], source: str | None = None):
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{len(problems)} bad row(s), nothing imported:\n  {shown}{more}")
        self.problems = problems


class ConfigError(Rejected):
    """A bad setting in the environment (SFQ_*): the process cannot start as configured."""


class NotFound(SfqError):
    """No such model, forecast, simulation or sweep."""


class Conflict(SfqError):
    """The object's state does not allow this (cancelling a finished model, the file of a model that is not
    trained), or the database's schema is not the one this sfq expects."""


class ArtifactError(Conflict):
    """A model file that is not the one recorded (its SHA-256 differs, or a rebuilt one's does) or holds
    types outside the allow-list: refused before or while parsing, never run. The message names the model
    when it is known."""


class Forbidden(SfqError):
    """The caller's database role may not do this (a submitter moving a production alias): HTTP 403."""


class Unavailable(SfqError):
    """The database cannot answer now (unreachable, restarting, no sfq schema yet): nothing was done."""


class NoSchema(Unavailable):
    """The database has no sfq schema (or an older one): run `sfq db upgrade`."""


class Retry(Unavailable):
    """A concurrent change got in the way (deadlock, serialization failure): nothing was done; try again."""


# The HTTP status each error answers with: the API's handler table (queue_app.api.app, the most specific
# class of an error deciding) and the client's way back (queue_app.client), one table.
HTTP_STATUS: dict[type[SfqError], int] = {
    Malformed: 400,
    TooLarge: 413,
    Rejected: 422,
    NotFound: 404,
    Conflict: 409,
    Forbidden: 403,
    Unavailable: 503,
}
