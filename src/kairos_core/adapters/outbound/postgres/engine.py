"""The database URL as operators write it, turned into an asyncpg engine, and shown without its password."""

from __future__ import annotations

from urllib.parse import unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kairos_core.domain import ConfigurationError

DRIVER = "postgresql+asyncpg"
_ACCEPTED_SCHEMES = frozenset({"postgresql", "postgres", DRIVER})
_EXAMPLE = "postgresql://user:password@host:5432/kairos or postgresql://user@/kairos?host=/run/postgresql"
_UNPARSEABLE = "<database URL that cannot be parsed>"
# What the asyncpg driver takes from a URL's query: anything else reached its connect() as an
# unexpected keyword, a TypeError out of the pool instead of a message (libpq's connect_timeout,
# application_name and options among them).
_QUERY_KEYS = frozenset(
    {"host", "port", "user", "password", "passfile", "service", "servicefile", "krbsrvname", "gsslib"}
    | {"ssl", "sslmode", "target_session_attrs", "command_timeout", "prepared_statement_cache_size"}
)
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def normalised_url(url: str) -> URL:
    """The SQLAlchemy URL for ``url`` on the asyncpg driver; ``ConfigurationError`` says what to fix.

    libpq's ``sslmode`` becomes asyncpg's ``ssl`` (same values), so a URL copied from a provider's
    dashboard works as given. Messages name the URL only masked: configuration errors end up in logs.
    """
    parsed = _parse(url)
    if parsed.drivername not in _ACCEPTED_SCHEMES:
        raise ConfigurationError(
            f"database URL {masked(url)} uses {parsed.drivername!r}: kairos-core speaks PostgreSQL only, "
            f"write it as {_EXAMPLE}"
        )
    if not parsed.database:
        raise ConfigurationError(f"database URL {masked(url)} names no database: add it, e.g. {_EXAMPLE}")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ConfigurationError(f"database URL {masked(url)} has port {parsed.port}: use 1-65535, e.g. 5432")
    query = dict(parsed.query)
    unknown = sorted(query.keys() - _QUERY_KEYS)
    if unknown:
        raise ConfigurationError(
            f"database URL {masked(url)} has query arguments the asyncpg driver does not take: "
            f"{', '.join(unknown)}; drop them (it takes {', '.join(sorted(_QUERY_KEYS))})"
        )
    if "sslmode" in query:
        query["ssl"] = query.pop("sslmode")
    if "ssl" in query and query["ssl"] not in _SSL_MODES:
        raise ConfigurationError(
            f"database URL {masked(url)} asks for ssl mode {query['ssl']!r}: "
            f"use one of {', '.join(_SSL_MODES)}"
        )
    return parsed.set(drivername=DRIVER, query=query)


def create_engine(url: str) -> AsyncEngine:
    """An asyncpg engine for ``url``; the caller owns it and disposes it.

    ``pool_pre_ping`` costs one round trip per checkout and saves the first batch after a server
    restart: the write path talks to the driver connection directly, so SQLAlchemy would not see
    a dead one otherwise.
    """
    return create_async_engine(
        normalised_url(url),
        pool_pre_ping=True,
        connect_args={"server_settings": {"application_name": "kairos-core"}},
    )


def masked(url: str | URL) -> str:
    """``url`` fit for a log line: the password (also a ``password=`` query argument) as ``***``."""
    if isinstance(url, str):
        url = _credentials_split_at_last_at(url)
    try:
        parsed = url if isinstance(url, URL) else _parse(url)
    except ConfigurationError:
        return _UNPARSEABLE
    hidden = {key: "***" for key in parsed.query if key.lower() == "password"}
    # Unquoted for the eye (?host=/run/postgresql): the password is already gone.
    return unquote(parsed.update_query_dict(hidden).render_as_string(hide_password=True))


def _credentials_split_at_last_at(url: str) -> str:
    """An unencoded ``@`` in a password makes the parser cut the credentials at the first ``@`` and
    take the rest of the password for the host; for masking, everything before the last ``@`` of
    the authority is the credentials."""
    scheme, separator, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if not separator or authority.count("@") < 2:
        return url
    credentials, _, host = authority.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{path}"


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        # The parser's own message may quote the URL, password and all: say it without it.
        raise ConfigurationError(
            f"database URL cannot be parsed (check the port and any special characters in the password, "
            f"which must be percent-encoded): write it as {_EXAMPLE}"
        ) from None
