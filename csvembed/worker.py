"""The batching RQ worker: per-row jobs, one model call and one transaction per batch.

It is RQ's SimpleWorker (no fork, so the model is loaded once) with `execute_job` overridden:
the job RQ dequeued plus up to batch_size - 1 more that are queued *now* are started together,
embedded together and stored together, then each is finished or failed on its own. The state
changes of a whole batch go to Redis in one pipeline; RQ's own per-job path costs 2-3 ms of
CPU per job, which on 2 cores competes with the model.

This reaches into RQ 3.0 internals (executions, the intermediate queue), hence rq==3.0.0.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Sequence

from rq import Queue, SimpleWorker, Worker
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job
from rq.results import Result
from rq.utils import now
from rq.worker import WorkerStatus
from rq.worker_registration import REDIS_WORKER_KEYS

from csvembed import defaults
from csvembed.embedder import share_cpu
from csvembed.errors import RowError
from csvembed.ingest import Ingestor
from csvembed.jobs import SERIALIZER, CsvembedJob, RowTask, refusal
from csvembed.settings import Settings
from csvembed.windows import Shape

log = logging.getLogger(__name__)


def worker_name() -> str:
    """host.pid.suffix: unique across hosts and restarts, so a restarted worker is never refused."""
    return f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(2)}"


def host_of(name: str) -> str:
    """The host part of a worker name (host names may hold dots themselves)."""
    return name.rsplit(".", 2)[0]


class _Batch:
    """The jobs a worker holds at once, with their executions."""

    def __init__(self, queue: Queue, jobs: list[Job], executions: list[Execution]) -> None:
        self.queue = queue
        self.jobs = jobs
        self.executions = executions


class BatchWorker(SimpleWorker):
    """A SimpleWorker that runs up to `batch_size` row-jobs through one model call.

    It runs only csvembed's rows: its jobs are CsvembedJobs, which never import what a job names
    (also when RQ's maintenance fails a dead worker's jobs), and any other job is failed alone.
    """

    def __init__(self, queues: Sequence[str], *, ingestor: Ingestor, batch_size: int, **kwargs) -> None:
        super().__init__(
            [Queue(name, connection=ingestor.records.connection, serializer=SERIALIZER, job_class=CsvembedJob)
             for name in queues],
            connection=ingestor.records.connection,
            serializer=SERIALIZER,
            job_class=CsvembedJob,
            name=kwargs.pop("name", None) or worker_name(),
            worker_ttl=defaults.WORKER_TTL,
            maintenance_interval=defaults.REAPER_INTERVAL,
            **kwargs,
        )
        self.ingestor = ingestor
        self.batch_size = batch_size
        self._held: _Batch | None = None
        self._held_lock = threading.Lock()
        self._cores_checked_at = float("-inf")
        self._stop_heartbeat = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None

    # --- liveness -----------------------------------------------------------------------------

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # A short TTL, kept fresh by the heartbeat thread, lets a dead worker's rows be found in
        # seconds instead of RQ's job timeout + 60 s.
        return defaults.HEARTBEAT_TTL

    def bootstrap(self, *args, **kwargs) -> None:
        super().bootstrap(*args, **kwargs)
        self.connection.hset(self.key, "batch_size", self.batch_size)
        self._heartbeat_thread = threading.Thread(target=self._keep_alive, name="csvembed-heartbeat", daemon=True)
        self._heartbeat_thread.start()

    def teardown(self) -> None:
        self._stop_heartbeat.set()
        super().teardown()

    def _keep_alive(self) -> None:
        """Refresh the heartbeat of every job in flight.

        RQ refreshes only while it waits for a job; during a long batch the main thread is inside
        the model, so this thread keeps every held job visibly alive. Rows of dead workers are
        reaped by RQ's maintenance in the main thread (every REAPER_INTERVAL seconds, between
        batches and while idle): its failure callbacks need the main thread's SIGALRM.
        """
        while not self._stop_heartbeat.wait(defaults.HEARTBEAT_INTERVAL):
            try:
                self._refresh_held()
            except Exception:  # a Redis hiccup must not kill the thread; the next beat retries
                log.warning("heartbeat failed", exc_info=True)

    def _refresh_held(self) -> None:
        # Under the lock, so that no beat for a batch can land after the batch was finished: a
        # late HSET would re-create a deleted job's key with no expiry. Executions carry the
        # liveness (the started registry's score); their keys expire on their own.
        with self._held_lock, self.connection.pipeline() as pipe:
            self.heartbeat(defaults.WORKER_TTL + 60, pipeline=pipe)
            if self._held is not None:
                for execution in self._held.executions:
                    execution.heartbeat(self._held.queue.started_job_registry, defaults.HEARTBEAT_TTL, pipeline=pipe)
            pipe.execute()

    # --- one batch ----------------------------------------------------------------------------

    def _share_cores(self) -> None:
        """Re-divide this host's cores among its live workers, at most every CPU_SHARE_INTERVAL s."""
        if time.monotonic() - self._cores_checked_at < defaults.CPU_SHARE_INTERVAL:
            return
        self._cores_checked_at = time.monotonic()
        host = host_of(self.name)
        keys = self.connection.smembers(REDIS_WORKER_KEYS)
        prefix = Worker.redis_worker_namespace_prefix
        on_host = sum(1 for key in keys if host_of(key.decode().removeprefix(prefix)) == host)
        threads = share_cpu(on_host, self.ingestor.embedder)
        log.debug("%d workers on %s: %d threads each", on_host, host, threads)

    def execute_job(self, job: Job, queue: Queue) -> None:
        # BUSY before taking more jobs: a SIGTERM now waits for this batch instead of raising
        # StopRequested between taking jobs and starting them.
        self.set_state(WorkerStatus.BUSY)
        self._share_cores()
        jobs = self._refuse_strangers(queue, [job, *self._take_queued(queue, self.batch_size - 1)])
        if not jobs:
            self.set_state(WorkerStatus.IDLE)
            return
        batch = self._start(queue, jobs)
        with self._held_lock:
            self._held = batch
        try:
            tasks = [RowTask.from_job(held) for held in batch.jobs]
            started = time.perf_counter()
            try:
                outcomes = self.ingestor.ingest(tasks)
            except Exception as exc:  # the store failed: nothing was stored, retry them all
                log.warning("storing a batch of %d rows failed: %s", len(tasks), exc)
                outcomes = [exc] * len(tasks)
        finally:
            with self._held_lock:
                self._held = None
        self._finish(batch, tasks, outcomes)
        failed = sum(isinstance(outcome, Exception) for outcome in outcomes)
        log.info("%d rows stored, %d failed, in %.1f s", len(tasks) - failed, failed, time.perf_counter() - started)
        self.set_state(WorkerStatus.IDLE)

    def _take_queued(self, queue: Queue, limit: int) -> list[Job]:
        """Up to `limit` more jobs that are queued right now; never waits for more to arrive."""
        if limit <= 0:
            return []
        with self.connection.pipeline(transaction=False) as pipe:
            for _ in range(limit):
                pipe.lmove(queue.key, queue.intermediate_queue_key)
            job_ids = [raw.decode() for raw in pipe.execute() if raw is not None]
        try:
            jobs: list[Job | None] = CsvembedJob.fetch_many(job_ids, connection=self.connection, serializer=SERIALIZER)
        except NoSuchJobError:  # a key on the queue that is no job at all (anyone can push one): dropped below
            jobs = [self._fetch_or_none(job_id) for job_id in job_ids]
        missing = [job_id for job_id, job in zip(job_ids, jobs) if job is None]
        if missing:  # deleted while queued (for instance a withdrawn submission)
            with self.connection.pipeline() as pipe:
                for job_id in missing:
                    pipe.lrem(queue.intermediate_queue_key, 1, job_id)
                pipe.execute()
        return [job for job in jobs if job is not None]

    def _fetch_or_none(self, job_id: str) -> Job | None:
        """One job, or None for a key that is not a job, so that one such key cannot stop the worker."""
        try:
            return CsvembedJob.fetch(job_id, connection=self.connection, serializer=SERIALIZER)
        except NoSuchJobError:
            return None

    def _refuse_strangers(self, queue: Queue, jobs: list[Job]) -> list[Job]:
        """Fail, alone and for good, every job that is not a well-formed csvembed row; return the rest.

        Anyone who can write to Redis can put a job on the queue: such a job must neither run nor
        stop the worker or its batch. Nothing it names is imported or called.
        """
        accepted = []
        for job in jobs:
            reason = refusal(job)
            if reason is None:
                accepted.append(job)
                continue
            log.warning("job %r refused: %s", job.id, reason)
            job.ended_at = now()
            job.retries_left = 0  # its own Retry must not bring it back
            job.failure_ttl = defaults.FAILURE_TTL  # nor may it stay in Redis forever
            self.connection.lrem(queue.intermediate_queue_key, 1, job.id)
            self.handle_job_failure(job, queue, exc_string=reason)
        return accepted

    def _start(self, queue: Queue, jobs: list[Job]) -> _Batch:
        """Mark every job STARTED, with an execution and a heartbeat, in one transaction."""
        ttl = defaults.HEARTBEAT_TTL
        executions = []
        with self.connection.pipeline() as pipe:
            self.heartbeat(defaults.WORKER_TTL + 60, pipeline=pipe)
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            for job in jobs:
                execution = Execution.create(job, ttl, pipeline=pipe, worker_name=self.name)
                self.executions[execution.id] = execution
                executions.append(execution)
                job.heartbeat(now(), ttl, pipeline=pipe)
                job.prepare_for_execution(self.name, pipeline=pipe)
                pipe.persist(job.key)
                # Out of the intermediate queue and into the started registry atomically, so a
                # crash at any point leaves the job in one place that RQ's cleanup looks at.
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            for submission_id in {job.args[0] for job in jobs}:
                self.ingestor.records.mark_started(pipe, submission_id)
            pipe.execute()
        return _Batch(queue, jobs, executions)

    def _finish(self, batch: _Batch, tasks: list[RowTask], outcomes: list[Exception | Shape]) -> None:
        """Finish the stored rows in one pipeline; fail the others one by one (the rare path)."""
        stored_rows: dict[str, list[tuple[int, Shape]]] = defaultdict(list)
        failed = []
        with self.connection.pipeline() as pipe:
            for job, execution, task, outcome in zip(batch.jobs, batch.executions, tasks, outcomes):
                if isinstance(outcome, Shape):
                    stored_rows[task.submission_id].append((task.row_number, outcome))
                    self._delete_finished(job, execution, pipe)
                else:
                    failed.append((job, execution, task, outcome))
            for submission_id, done in stored_rows.items():
                self.ingestor.records.mark_done(pipe, submission_id, done)
            pipe.hincrby(self.key, "successful_job_count", sum(map(len, stored_rows.values())))
            pipe.execute()
        for job, execution, task, outcome in failed:
            self._fail(batch.queue, job, execution, task, outcome)

    def _delete_finished(self, job: Job, execution: Execution, pipe) -> None:
        """What RQ's success path does for a job with result_ttl=0, without its per-job round trips."""
        execution.delete(job=job, pipeline=pipe)
        self.executions.pop(execution.id, None)
        # The job's execution registry holds only this execution; RQ's own delete() would first
        # read every execution back, one round trip per job.
        pipe.delete(job.key, job.dependents_key, job.dependencies_key, Result.get_key(job.id),
                    job.execution_registry.key)

    def _fail(self, queue: Queue, job: Job, execution: Execution, task: RowTask, error: Exception) -> None:
        """Retry a transient failure; record a final one (with its reason) on the submission."""
        job.ended_at = now()
        if isinstance(error, RowError):
            job.retries_left = 0  # the same row would fail the same way again
        reason = str(error) if isinstance(error, RowError) else f"{type(error).__name__}: {error}"
        if not job.should_retry and not self.ingestor.records.mark_failed(
                None, task.submission_id, task.row_number, task.row_id, reason, permanent=isinstance(error, RowError)):
            with self.connection.pipeline() as pipe:  # its submission was deleted meanwhile: keep nothing
                self._delete_finished(job, execution, pipe)
                pipe.execute()
            return
        self.handle_job_failure(job, queue, exc_string=reason, execution=execution)


def run_worker(settings: Settings, queues: Sequence[str], burst: bool, batch_size: int, device: str = "auto",
               backend: str = "auto") -> bool:
    """Load the model once, then work until stopped (or until the queues are empty with burst).

    Returns whether any job was processed.
    """
    from csvembed.broker import connect
    from csvembed.embedder import choose_backend, load_embedder
    from csvembed.progress import SubmissionRecords
    from csvembed.store import open_store

    device, backend = choose_backend(settings, device, backend)
    connection = connect(settings, wait_forever=True)
    if burst and not _has_work(connection, queues):
        # A script's unchanged re-run ends here: loading the model would take most of its time.
        log.info("nothing queued on %s", ", ".join(queues))
        return False
    embedder = load_embedder(settings, device=device, backend=backend)
    ingestor = Ingestor(embedder, open_store(settings.db), SubmissionRecords(connection))
    worker = BatchWorker(queues, ingestor=ingestor, batch_size=batch_size)
    log.info("worker %s: model %s loaded on %s (%s); listening on %s", worker.name, settings.model_id,
             embedder.device, embedder.backend, ", ".join(queues))
    return worker.work(burst=burst, logging_level="WARNING")


def _has_work(connection, queues: Sequence[str]) -> bool:
    """Rows queued, or started ones that a burst worker may find abandoned and requeue."""
    with connection.pipeline(transaction=False) as pipe:
        for name in queues:
            queue = Queue(name, connection=connection, serializer=SERIALIZER)
            pipe.llen(queue.key)
            pipe.llen(queue.intermediate_queue_key)
            pipe.zcard(queue.started_job_registry.key)
        return any(pipe.execute())
