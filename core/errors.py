"""Domain exceptions with a short headline for the dashboard and the detail underneath."""

from __future__ import annotations


class TglocError(Exception):
    """Base of every error tgloc raises on purpose.

    Args:
        headline: one sentence a user can act on, shown with `st.error` or by the CLI.
        detail: what was found and where, shown in an expander or under the headline.
    """

    def __init__(self, headline: str, detail: str = "") -> None:
        super().__init__(headline if not detail else f"{headline}\n{detail}")
        self.headline = headline
        self.detail = detail


class ConfigError(TglocError, ValueError):
    """A setting is outside its allowed range or of the wrong kind."""


class IngestError(TglocError):
    """A file cannot be read into the store; nothing of it was stored."""


class DataError(TglocError):
    """The stored data cannot support the requested step (too few devices, no bins)."""


class StoreBusyError(TglocError):
    """Another process has the DuckDB file locked. Retry after it finishes."""


class RunNotFoundError(TglocError):
    """No published run matches the request."""


class SuppressionNotFoundError(TglocError):
    """No suppression rule has the given id."""
