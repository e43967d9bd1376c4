"""How long one run of a deal's workflow may grow, and how long one workflow task may take.

A worker that does not hold a deal in its cache (after a restart, an eviction, or a
continue-as-new the server refused because messages arrived meanwhile) rebuilds it by
replaying the current run's whole history inside one workflow task, and the replays of
all the tasks a worker runs at once share one interpreter. So the worst case is a worker's
every task slot replaying a run of full length at once, and it must fit in the task
timeout: 50 slots (``OPPFLOW_MAX_CONCURRENT_WORKFLOW_TASKS``) x 250 events x 0.45 ms per
event (a 2-core Xeon; about 1.4 ms on the 2-core EPYC of earlier measurements) is 6-18 s
against 30 s (docs/performance.md, "Busy deals").
Both numbers are part of the workflow's behaviour: changing them needs a new revision
(workflows/revisions.py).
"""

from datetime import timedelta

# A run continues as new at this many events; Temporal would suggest it at 4,096, whose
# replays took 51-55 s when ten ran at once.
RUN_EVENTS_LIMIT = 250

# Temporal's default is 10 s. A task that a crashed worker held is retried after this, so
# it stays well inside the minute the reliability promise gives an escalation.
WORKFLOW_TASK_TIMEOUT = timedelta(seconds=30)
