"""Jobs and renditions: the state machine, its queries, and the one writer of their records.

- `state` (imported as `jobstate`): the job state machine, one pure module that every service
  calls to change a job, with `renditions` (the rendition state machine), `transitions` (the
  transitions as data, the status sets), `queries` (guards a face asks, such as `can_start`)
  and `accepted` (the record a new job starts as, from its submission);
- `store`: `RecordStore`, compare-and-set writes of job and rendition records, each followed by
  its event (only the scheduler writes jobs and renditions; transcoders write their renditions);
- `events`: the events that report a record's change (record -> event builders).

The main names are re-exported here; code inside vidmesh imports from the module that defines them.
"""

from shared.jobs.store import RecordStore
from shared.jobs.transitions import ACTIVE, FINISHED, InvalidTransition

__all__ = ["ACTIVE", "FINISHED", "InvalidTransition", "RecordStore"]
