"""Bearer tokens: HS256 JWTs signed with ``OPPFLOW_JWT_SECRET``.

Claims: ``sub`` (user id), ``roles`` (list), ``exp``. The actor of every command is the
token's subject with its primary role; a body never names the actor. Service accounts
(role ``automation``) use the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

import jwt
from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import TypeAdapter, ValidationError

from api.errors import ApiError
from sales.durations import parse_duration
from sales.messages import Actor, Identifier
from starter.org_chart import primary_role

ALGORITHM = "HS256"
ISSUER = "oppflow"
DEFAULT_TTL = timedelta(hours=8)

bearer_scheme = HTTPBearer(auto_error=False, description="JWT from `oppflow token --user ID`")
_identifier = TypeAdapter(Identifier)


@dataclass(frozen=True)
class Principal:
    user_id: str
    roles: tuple[str, ...]

    @property
    def actor(self) -> Actor:
        return Actor(id=self.user_id, role=primary_role(list(self.roles)))


def parse_ttl(text: str) -> timedelta:
    """``8h``, ``30m``, ``7d``; business days make no sense for a token lifetime."""
    duration = parse_duration(text)
    if duration.is_business_days:
        raise ValueError("token lifetime: use s, m, h, d or w, not business days")
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[duration.unit]
    return timedelta(seconds=duration.amount * seconds)


def mint_token(
    secret: str, user_id: str, roles: list[str], ttl: timedelta = DEFAULT_TTL, now: datetime | None = None
) -> str:
    issued = now or datetime.now(UTC)
    claims = {"sub": user_id, "roles": list(roles), "iss": ISSUER, "iat": issued, "exp": issued + ttl}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def _unauthorized(rule: str, message: str) -> ApiError:
    return ApiError(401, rule, message, headers={"WWW-Authenticate": 'Bearer realm="oppflow"'})


def verify_token(token: str, secret: str) -> Principal:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "exp"]},
            leeway=timedelta(seconds=30),
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token_expired", "the bearer token has expired; mint a new one") from None
    except jwt.InvalidTokenError as exc:
        raise _unauthorized("invalid_token", f"the bearer token is not valid: {exc}") from None
    roles = claims.get("roles")
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
        raise _unauthorized("invalid_token", "the bearer token carries no roles")
    try:
        user_id = _identifier.validate_python(claims["sub"])
    except ValidationError:
        raise _unauthorized("invalid_token", "the bearer token's subject is not a user id") from None
    return Principal(user_id=user_id, roles=tuple(roles))


async def current_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
) -> Principal:
    """FastAPI dependency: the caller, from ``Authorization: Bearer <JWT>``."""
    if credentials is None:
        raise _unauthorized("missing_token", "send Authorization: Bearer <token> (oppflow token --user ID)")
    return verify_token(credentials.credentials, request.app.state.services.jwt_secret)
