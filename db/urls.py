"""The one database URL, spelled for each driver."""

_PLAIN_SCHEMES = ("postgresql://", "postgres://")


def sqlalchemy_url(url: str) -> str:
    """`postgresql://...` -> `postgresql+psycopg://...` (psycopg 3); explicit drivers are kept."""
    for scheme in _PLAIN_SCHEMES:
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    return url


def asyncpg_dsn(url: str) -> str:
    """asyncpg only accepts the plain `postgresql://` scheme."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.startswith("postgresql+"):
        return "postgresql://" + rest
    return url
