"""How the opportunity workflow's behaviour changed over time, for deals already running.

A deal replays the code path it first ran. Histories recorded before a change ask
``workflow.patched(PATCH_ID)`` and replay the old path. A deal whose start input carries
``revision >= REVISION_N`` was started after every change up to revision N: it takes the new paths
without asking, so its history holds no patch markers and no ``TemporalChangeVersion``
search-attribute upserts.
"""

ESCALATION_ROW_IN_WORKER = "escalation-row-local-activity"
ONLY_CHANGED_SEARCH_ATTRIBUTES = "upsert-changed-search-attributes"
RUN_LENGTH_LIMIT = "continue-as-new-at-run-length-limit"

# Revision 1: ESCALATION_ROW_IN_WORKER and ONLY_CHANGED_SEARCH_ATTRIBUTES taken, and a new
# deal's stage entry time is the StageEnteredAt its starter indexed at start, so the first
# task upserts nothing.
REVISION_1 = 1
# Revision 2: a run continues as new once its history reaches workflows/run_length.py
# RUN_EVENTS_LIMIT (patch RUN_LENGTH_LIMIT for deals started before), and continues with
# its WORKFLOW_TASK_TIMEOUT.
REVISION_2 = 2
REVISION = REVISION_2  # what starter.client puts in a new deal's input
