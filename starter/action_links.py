"""Signed action links for escalation notifications: acknowledge, snooze N days, open the deal.

Each link is a JWT (HS256, the API's secret, audience ``oppflow-action``, so it is never
accepted as a bearer token and a bearer token is never accepted as a link) carrying the
opportunity, the stage entry and level it was sent for, the recipient it acts as, the
action, an expiry and a nonce. The API lets each nonce work once (recorded in
``action_link_uses``). The nonce is derived from the escalation and action, so a retried
notification carries links with the same nonces.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import jwt

AUDIENCE = "oppflow-action"
ALGORITHM = "HS256"
DEFAULT_TTL = timedelta(days=7)
SNOOZE_DAYS = (1, 3, 7)
ACTIONS = ("acknowledge", "snooze", "open")


@dataclass(frozen=True)
class ActionClaim:
    opportunity_id: str
    stage_entry_seq: int
    level: int
    recipient_id: str
    action: str
    days: int | None
    nonce: str
    expires_at: datetime


class LinkError(Exception):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


def nonce_for(
    secret: str, opportunity_id: str, stage_entry_seq: int, level: int, recipient_id: str, action: str
) -> str:
    key = f"{opportunity_id}|{stage_entry_seq}|{level}|{recipient_id}|{action}"
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()[:32]


def sign(
    secret: str,
    *,
    opportunity_id: str,
    stage_entry_seq: int,
    level: int,
    recipient_id: str,
    action: str,
    now: datetime,
    days: int | None = None,
    ttl: timedelta = DEFAULT_TTL,
) -> str:
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
    named = f"{action}_{days}d" if action == "snooze" else action
    claims = {
        "aud": AUDIENCE,
        "sub": recipient_id,
        "opp": opportunity_id,
        "seq": stage_entry_seq,
        "lvl": level,
        "act": action,
        "iat": now,
        "exp": now + ttl,
        "jti": nonce_for(secret, opportunity_id, stage_entry_seq, level, recipient_id, named),
    }
    if days is not None:
        claims["days"] = days
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def links_for(
    base_url: str,
    secret: str,
    opportunity_id: str,
    stage_entry_seq: int,
    level: int,
    recipient_id: str,
    now: datetime,
    *,
    ttl: timedelta = DEFAULT_TTL,
    snooze_days: tuple[int, ...] = SNOOZE_DAYS,
) -> dict[str, str]:
    """``{"acknowledge": url, "snooze_1d": url, ..., "open": url}`` for one escalation.

    Pure: the same arguments give the same links. ``now`` is the moment the level fired.
    """
    common = {
        "opportunity_id": opportunity_id,
        "stage_entry_seq": stage_entry_seq,
        "level": level,
        "recipient_id": recipient_id,
        "now": now,
        "ttl": ttl,
    }
    root = base_url.rstrip("/") + "/actions/"
    links = {"acknowledge": root + quote(sign(secret, action="acknowledge", **common))}  # type: ignore[arg-type]
    for days in snooze_days:
        token = sign(secret, action="snooze", days=days, **common)  # type: ignore[arg-type]
        links[f"snooze_{days}d"] = root + quote(token)
    links["open"] = root + quote(sign(secret, action="open", **common))  # type: ignore[arg-type]
    return links


def verify(token: str, secret: str, now: datetime | None = None) -> ActionClaim:
    """The claim of a valid, unexpired link; ``LinkError`` (link_invalid, link_expired) otherwise."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["exp", "sub", "jti", "aud"], "verify_exp": False},
        )
        claim = ActionClaim(
            opportunity_id=str(claims["opp"]),
            stage_entry_seq=int(claims["seq"]),
            level=int(claims["lvl"]),
            recipient_id=str(claims["sub"]),
            action=str(claims["act"]),
            days=int(claims["days"]) if claims.get("days") is not None else None,
            nonce=str(claims["jti"]),
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        )
    except (jwt.InvalidTokenError, KeyError, TypeError, ValueError):
        raise LinkError(
            "link_invalid", "this action link is not valid (altered or not from oppflow)"
        ) from None
    if claim.action not in ACTIONS or (claim.action == "snooze" and not claim.days):
        raise LinkError("link_invalid", "this action link names no known action")
    if (now or datetime.now(UTC)) >= claim.expires_at:
        raise LinkError("link_expired", f"this action link expired at {claim.expires_at.isoformat()}")
    return claim
