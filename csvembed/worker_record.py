"""The fields csvembed keeps on RQ's worker hash next to RQ's own: the worker writes them, status reads them.

RQ's failed_job_count counts every failed attempt, so a run whose rows all succeeded on a retry read as
thousands of failures: rows failed for good and attempts retried are counted here instead, in the
pipeline that finishes their batch.
"""

ROWS_FAILED = "rows_failed"
RETRIES = "retries"
# While the store is unreachable: what the worker waits for ("store"), and since when (Unix time).
WAITING_FOR = "waiting_for"
WAITING_SINCE = "waiting_since"
