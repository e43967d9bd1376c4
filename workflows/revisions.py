"""How the opportunity workflow's behaviour changed over time, for deals already running.

A deal replays the code path it first ran. Histories recorded before a change ask
``workflow.patched(PATCH_ID)`` and replay the old path. A deal whose start input carries
``revision >= REVISION_1`` was started after every change below: it takes the new paths
without asking, so its history holds no patch markers and no ``TemporalChangeVersion``
search-attribute upserts.
"""

ESCALATION_ROW_IN_WORKER = "escalation-row-local-activity"
ONLY_CHANGED_SEARCH_ATTRIBUTES = "upsert-changed-search-attributes"

# Revision 1: both patches above taken, and a new deal's stage entry time is the
# StageEnteredAt its starter indexed at start, so the first task upserts nothing.
REVISION_1 = 1
REVISION = REVISION_1  # what starter.client puts in a new deal's input
