"""Who may do what on a deal.

An actor's claimed role only counts where the deal itself confirms it: ``owner`` is the
deal's owner id, ``manager`` is a manager in the owner's reporting chain, a
cross-functional role counts for members of the deal's team with that role. ``admin``
and ``automation`` are trusted as claimed; callers are authenticated by the HTTP API
(JWT) or by Temporal's own namespace permissions.
"""

from __future__ import annotations

from collections.abc import Iterable

from sales.messages import Actor
from sales.refusals import CommandRefused
from sales.state import OpportunityState


def standing(state: OpportunityState, actor: Actor) -> set[str]:
    """The roles this actor really holds on this deal."""
    held: set[str] = set()
    if actor.id == state.owner_id:
        held.add("owner")
    if actor.role == "manager" and actor.id in state.owner_managers:
        held.add("manager")
    if actor.role in ("admin", "automation"):
        held.add(actor.role)
    held.update(state.team_roles_of(actor.id))
    return held


def describe(actor: Actor, held: set[str]) -> str:
    if held:
        return f"{actor.id} ({', '.join(sorted(held))})"
    return f"{actor.id} (role {actor.role}, not the owner, their manager or on the deal team)"


def require(
    state: OpportunityState, actor: Actor, allowed: Iterable[str], action: str, rule: str
) -> set[str]:
    held = standing(state, actor)
    allowed_set = set(allowed)
    if not held & allowed_set:
        raise CommandRefused(
            rule,
            f"{describe(actor, held)} may not {action}: allowed for {', '.join(sorted(allowed_set))}",
        )
    return held


def may_override(state: OpportunityState, held: set[str]) -> bool:
    return bool(held & set(state.process.rules.override_roles))


def require_field_edit(state: OpportunityState, actor: Actor, names: Iterable[str]) -> None:
    held = standing(state, actor)
    refused = [name for name in names if not held & set(state.process.field_spec(name).editable_by)]
    if refused:
        raise CommandRefused(
            "field_permissions",
            f"{describe(actor, held)} may not edit {', '.join(sorted(refused))}",
        )
