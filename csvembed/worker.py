"""The batching RQ worker: per-row jobs, one model call and one transaction per batch.

It is RQ's SimpleWorker (no fork, so the model is loaded once) with `execute_job` overridden:
the job RQ dequeued plus up to batch_size - 1 more that are queued *now* are started together,
embedded together and stored together, then each is finished or failed on its own. A batch is
taken and started with one Lua script call, and finished with one more (csvembed/batch_scripts.py),
writing exactly what RQ's own path writes: RQ's per-job path costs 2-3 ms of CPU per job, and even a
pipelined one ~250 µs, which caps a worker far below a fast model or a GPU.

Batch follows batch inside one `execute_job` while the queue has rows (RQ's own loop costs a dozen
round trips per job it dequeues). Takes and finishes run on a thread of their own, in order, and writes
on another: a batch's finish runs while the next batch is embedded and, with a fast model, the batch
after it is taken meanwhile, so that Redis' work and the worker's overlap instead of adding up; with a
model on a device, a batch is also stored while the next is embedded. A batch is finished only after its
transaction committed, and every batch held is kept alive.

This reaches into RQ 3.0 internals (executions, the intermediate queue), hence rq==3.0.0.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import datetime
from queue import SimpleQueue

from redis import ConnectionError as RedisConnectionError
from redis import Redis, RedisError, ResponseError
from redis import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker, Worker
from rq.exceptions import NoSuchJobError, StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.utils import now
from rq.worker import WorkerStatus
from rq.worker_registration import REDIS_WORKER_KEYS

from csvembed import batch_durations, defaults
from csvembed.batch_scripts import BatchScripts, TakeStart, row_of, run_pipeline
from csvembed.broker import PatientRetry
from csvembed.embedder import share_cpu
from csvembed.errors import RowError
from csvembed.ingest import Embedded, Ingestor
from csvembed.jobs import SERIALIZER, RowTask, refusal
from csvembed.outage import PatientStore, StopWaiting, sleep_unless
from csvembed.redact import mask_secrets
from csvembed.routing import model_queue
from csvembed.settings import Settings
from csvembed.tasks import CsvembedJob
from csvembed.webhooks import Deliverer
from csvembed.windows import Shape
from csvembed.worker_record import RETRIES, ROWS_FAILED, WAITING_FOR, WAITING_SINCE

log = logging.getLogger(__name__)


def worker_name() -> str:
    """host.pid.suffix: unique across hosts and restarts, so a restarted worker is never refused."""
    return f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(2)}"


def host_of(name: str) -> str:
    """The host part of a worker name (host names may hold dots themselves)."""
    return name.rsplit(".", 2)[0]


# Take the next batch while this one is embedded when the last one took less than this (seconds), or as much
# per row for a batch larger than the default (a GPU's 1,024 rows take ~0.15 s): the Redis scripts then run
# beside the model instead of between its calls. A slower model gains little (a take costs some 30 µs a row),
# and a batch taken ahead waits, held from other workers, for as long.
PREFETCH_BELOW = 0.1


class _SerialThread:
    """Runs calls one after another on a daemon thread of its own; each call's Future has its result.

    Daemon, so that a worker stopped for good while Redis is unreachable (a call waiting on it) still exits.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: SimpleQueue = SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, call, *args) -> Future:
        future: Future = Future()
        self._calls.put((future, call, args))
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        return future

    def _serve(self) -> None:
        while True:
            future, call, args = self._calls.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call(*args))
                except BaseException as exc:  # handed to whoever waits on it
                    future.set_exception(exc)


class _Batch:
    """The rows a worker holds at once: their job ids, execution ids and tasks, started at `started_at`."""

    def __init__(self, queue: Queue, ids: list[str], execution_ids: list[str], tasks: list[RowTask],
                 started_at: datetime) -> None:
        self.queue = queue
        self.ids = ids
        self.execution_ids = execution_ids
        self.tasks = tasks
        self.started_at = started_at
        self.seconds = 0.0  # from its model call's start to its write's commit (set by the store's thread)

    def execution(self, index: int, connection: Redis, worker_name: str) -> Execution:
        """RQ's Execution object for one row, built only where RQ's own code needs one."""
        execution = Execution(self.execution_ids[index], self.ids[index], connection, worker_name=worker_name)
        execution.created_at = execution.last_heartbeat = self.started_at
        return execution


class BatchWorker(SimpleWorker):
    """A SimpleWorker that runs up to `batch_size` row-jobs through one model call.

    It runs only csvembed's rows: its jobs are CsvembedJobs, which never import what a job names
    (also when RQ's maintenance fails a dead worker's jobs), and any other job is failed alone.
    While its store is unreachable it keeps the batch it holds and waits (csvembed.outage).
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
        # Its writes wait out store outages; the ingestor stays unaware of them.
        ingestor.store = PatientStore(ingestor.store, self._wait_for_store, self._store_back)
        self.ingestor = ingestor
        self.batch_size = batch_size
        self._stopping = False  # set by the signal handler: read it, never wait on it
        self._store_down_since: float | None = None
        self._scripts = BatchScripts(self.connection)
        # The batches started and not yet finished (or released): the one being embedded, the next one when
        # taken ahead, the last one while its finish is in flight. The heartbeat thread keeps each alive.
        self._held: list[_Batch] = []
        self._held_lock = threading.Lock()
        # Takes and finishes run on this thread, in order: a finish overlaps the next batch's embedding.
        self._redis_calls = _SerialThread("csvembed-redis")
        # Writes run on this one, one batch at a time: a batch is stored while the next is embedded.
        self._store_calls = _SerialThread("csvembed-store")
        self._finishing: deque[Future] = deque()
        # Whether to take the next batch while this one is embedded (a fast model: see PREFETCH_BELOW).
        self._prefetch = False
        # Whether a batch is stored while the next is embedded: when the model runs on a device. A model on the
        # CPU already uses every core, and a write beside it only competed (static model on 2 cores: 0.58 -> 0.53
        # of the hand-rolled loop), so there each batch is stored before the next is embedded.
        self._overlap_store = ingestor.embedder.device != "cpu"
        # Submissions whose start this worker recorded (mark_started sets a field once): not written again.
        self._marked_started: set[str] = set()
        self._cores_checked_at = float("-inf")
        self._stop_heartbeat = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        # Webhooks are delivered by a thread of their own, never on the embedding path.
        self._deliverer: Deliverer | None = None

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
        self._deliverer = Deliverer(self.connection).start()

    def teardown(self) -> None:
        self._stop_heartbeat.set()
        if self._deliverer is not None:
            self._deliverer.stop()
        try:
            super().teardown()
        except RedisError as exc:  # stopping while Redis is down: other workers see the lapsed heartbeat
            log.warning("stopped without reaching Redis (%s); rows still held are requeued once this worker's"
                        " heartbeat lapses (%d s)", exc, defaults.HEARTBEAT_TTL)

    def handle_warm_shutdown_request(self) -> None:
        # Runs in the signal handler, before RQ's own stop (which writes to Redis): from now on no wait,
        # for Redis or for the store, may keep the worker from stopping.
        self._stopping = True
        retry = self.connection.get_retry()
        if isinstance(retry, PatientRetry):
            retry.stop()
        super().handle_warm_shutdown_request()

    def set_shutdown_requested_date(self) -> None:
        try:
            super().set_shutdown_requested_date()
        except RedisError:  # only informative; a stop must not fail on it
            pass

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
        # late HSET would re-create a deleted execution's key. Executions carry the liveness (the
        # started registry's score); their keys expire on their own.
        with self._held_lock, self.connection.pipeline() as pipe:
            self.heartbeat(defaults.WORKER_TTL + 60, pipeline=pipe)
            for held in self._held:
                registry = held.queue.started_job_registry
                for index in range(len(held.ids)):
                    held.execution(index, self.connection, self.name).heartbeat(registry, defaults.HEARTBEAT_TTL,
                                                                                pipeline=pipe)
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
        try:
            self._run(job, queue)
        except (RedisConnectionError, RedisTimeoutError):
            if not self._stopping:
                raise
            # Stopping with Redis down: the rows held stay in the started registry, where the other
            # workers find them and requeue them once this worker's heartbeat lapses.
            log.warning("stopping without Redis")
            raise StopRequested() from None

    def _run(self, job: Job, queue: Queue) -> None:
        """Batches from `queue`, the first with the job RQ dequeued, while it has rows.

        RQ's own loop costs a dozen round trips per job it dequeues; this one takes and starts each next
        batch in one call, and goes back to RQ's loop when a stop is asked for, maintenance is due, workers
        are suspended or a queue listed first has rows: RQ's loop then acts as it would between two jobs.
        Every finish has completed (or raised) when it returns.
        """
        # BUSY before taking more jobs: a SIGTERM now waits for this batch instead of raising
        # StopRequested between taking jobs and starting them. (The take script writes it to Redis.)
        self._state = WorkerStatus.BUSY
        try:
            self._batches(queue, job)
        finally:
            self._settle()
        self.set_state(WorkerStatus.IDLE)

    def _batches(self, queue: Queue, job: Job) -> None:
        """Take, embed and store batch after batch. A batch is stored on the store's thread, while the next one
        is embedded when the model runs on a device (`_overlap_store`); once stored, its finish goes to the Redis
        thread.

        With a fast model (`_prefetch`) the next batch is taken while this one is embedded: the scripts then
        run on Redis' core while this process embeds and stores. A GPU waits neither for Redis nor for the
        store (bench/ceiling.py --accelerator-us: 0.49 of an emulated device's rate before both, 0.86 after).
        """
        takes: deque[Future] = deque([self._redis_calls.submit(self._take_start, queue, job)])
        saving: tuple[_Batch, Future] | None = None  # the batch being stored, and the Future of its write
        unsaved: _Batch | None = None  # embedded, its write not yet handed to the store's thread
        try:
            while takes:
                taken, batch = takes.popleft().result()
                # No more batches taken once a stop is asked for or maintenance is due; those taken are embedded.
                more = taken and not (self._stop_requested or self.should_run_maintenance_tasks)
                if batch is None:  # nothing taken, or every job taken was refused
                    if more and not takes:
                        takes.append(self._redis_calls.submit(self._take_start, queue, None))
                    continue
                if more and self._prefetch and not takes:
                    takes.append(self._redis_calls.submit(self._take_start, queue, None))
                self._share_cores()
                started = time.perf_counter()
                embedded, unsaved = self._embed(batch), batch
                if self._stop_requested:
                    self._drop(takes)
                if saving is not None:
                    saving[1].result()  # one write at a time; StopWaiting if the store was unreachable
                saving, unsaved = (batch, self._store_calls.submit(self._save, batch, embedded, started)), None
                if not self._overlap_store:
                    saving[1].result()
                if more and not takes and not self._stop_requested:
                    takes.append(self._redis_calls.submit(self._take_start, queue, None))
                elapsed = time.perf_counter() - started
                self._prefetch = elapsed < PREFETCH_BELOW * max(1.0, len(batch.tasks) / defaults.BATCH_SIZE)
                self._raise_finish_failures(wait=False)
            if saving is not None:
                saving[1].result()
        except StopWaiting:  # a stop was asked for while the store was unreachable: the rows go back
            self._drop(takes)  # (the later rows first: each batch goes back to the front of the queue)
            self._release([held for held in (unsaved, saving[0]) if held is not None])

    def _embed(self, batch: _Batch) -> Embedded:
        """The model's work on a started batch (Ingestor.embed); a failure of anything but a row retries them all."""
        try:
            return self.ingestor.embed(batch.tasks)
        except Exception as exc:
            log.warning("embedding a batch of %d rows failed: %s", len(batch.tasks), mask_secrets(str(exc)))
            return Embedded([exc] * len(batch.tasks), [], None)

    def _save(self, batch: _Batch, embedded: Embedded, started: float) -> None:
        """On the store's thread: store an embedded batch (Ingestor.save) whose model call began at `started`
        (time.perf_counter), then hand its finish to the Redis thread. StopWaiting (a stop asked for while the
        store was unreachable) goes to whoever waits for it."""
        try:
            outcomes = self.ingestor.save(embedded)
        except Exception as exc:  # the store failed: nothing was stored, retry them all
            log.warning("storing a batch of %d rows failed: %s", len(batch.tasks), mask_secrets(str(exc)))
            outcomes = [exc] * len(batch.tasks)
        batch.seconds = time.perf_counter() - started
        self._finishing.append(self._redis_calls.submit(self._finish, batch, outcomes))

    def _drop(self, takes: deque[Future]) -> None:
        """Give back the batches taken ahead that will not be embedded (a stop was asked for): their rows go
        back to the front of the queue, their retries untouched."""
        while takes:
            _taken, batch = takes.pop().result()
            if batch is not None:
                self._give_back(batch)
                log.info("stopping: %d rows taken ahead queued again", len(batch.ids))

    def _raise_finish_failures(self, wait: bool) -> None:
        """Raise the first failure of the finishes handed to the Redis thread (waiting for them all with wait).
        The store's thread adds finishes meanwhile: deque appends and pops are atomic."""
        failure: BaseException | None = None
        for _ in range(len(self._finishing)):
            future = self._finishing.popleft()
            if wait or future.done():
                failure = failure or future.exception()
            else:
                self._finishing.append(future)
        if failure is not None:
            raise failure

    def _settle(self) -> None:
        """Wait until the Redis thread has nothing left to do and raise the first finish that failed. Rows still
        held by then (the loop raised) are left to the requeue once their heartbeat lapses."""
        try:
            self._store_calls.submit(lambda: None).result()  # every write done, its finish handed on
            self._redis_calls.submit(lambda: None).result()
            self._raise_finish_failures(wait=True)
        finally:
            with self._held_lock:
                self._held = []

    # --- the store unreachable ------------------------------------------------------------------

    def _wait_for_store(self, reason: str, seconds: float) -> None:
        """Between two tries of a write: say so once per outage, show it on the worker's hash, then wait.

        The heartbeat thread keeps the worker and the held rows alive meanwhile, so no other worker
        takes them for abandoned. A stop asked for meanwhile ends the wait (StopWaiting).
        """
        if self._store_down_since is None:
            self._store_down_since = time.time()
            log.warning("store unavailable: %s; waiting", reason)
            self._show_waiting({WAITING_FOR: "store", WAITING_SINCE: self._store_down_since})
        if self._stopping or sleep_unless(lambda: self._stopping, seconds):
            raise StopWaiting()

    def _store_back(self) -> None:
        log.warning("store available again after %.1f s; storing", time.time() - (self._store_down_since or 0))
        self._store_down_since = None
        self._show_waiting(None)

    def _show_waiting(self, fields: dict | None) -> None:
        """Set (or with None clear) the waiting fields that `status` and `workers` show; a Redis outage
        must not stop the wait for the store, so this is best effort."""
        try:
            if fields is None:
                self.connection.hdel(self.key, WAITING_FOR, WAITING_SINCE)
            else:
                self.connection.hset(self.key, mapping=fields)
        except RedisError as exc:
            log.warning("could not show the wait on the worker's record: %s", exc)

    def _give_back(self, batch: _Batch) -> None:
        """Put a batch that was never stored back at the front of its queue, its retries untouched."""
        self._let_go(batch)
        self._scripts.release(batch.queue, self.name, batch.ids, batch.execution_ids)

    def _release(self, batches: list[_Batch]) -> None:
        """Give back the batches held while the store was unreachable, on a stop, the later ones first: the one
        whose write waited and, on a device, the next one embedded meanwhile."""
        for batch in batches:
            self._give_back(batch)
        log.warning("stopped while the store was unreachable: %d rows queued again", sum(len(b.ids) for b in batches))
        self._store_down_since = None
        self._show_waiting(None)
        self.set_state(WorkerStatus.IDLE)

    # --- taking, starting, finishing ----------------------------------------------------------

    def _take_start(self, queue: Queue, first: Job | None) -> tuple[bool, _Batch | None]:
        """Take `first` (the job RQ dequeued, if any) and up to a batch of queued jobs, and start them in one
        script call: (whether any job was taken, the started batch or None if none of them is to run).
        """
        queues_first = [] if first is not None else self._ordered_queues[:self._ordered_queues.index(queue)]
        call = TakeStart(self._scripts, queue, self.name, defaults.HEARTBEAT_TTL, defaults.WORKER_TTL + 60,
                         first.id if first is not None else None, self.batch_size - (first is not None), now(),
                         queues_first)
        return self._started(queue, call, call.send(self.connection))

    def _started(self, queue: Queue, call: TakeStart, reply: list) -> tuple[bool, _Batch | None]:
        """What a take-and-start call took and started, as `_take_start` returns it.

        No Job object is built for a row that is exactly what csvembed enqueues. Anything else is fetched as a
        Job and judged by `refusal`: a job refused is failed alone, for good (see `_refuse`).
        """
        taken = call.taken(reply)
        started_at = self.last_heartbeat = call.at
        if not taken:
            return False, None
        ids, execution_ids, tasks = taken.ids, taken.execution_ids, [row_of(data) for data in taken.data]
        if not all(tasks):  # a started job whose data is not a row's: judged as a Job
            judged = [task or self._judge_started(queue, job_id, execution_id, started_at)
                      for job_id, execution_id, task in zip(ids, execution_ids, tasks)]
            kept = [i for i, task in enumerate(judged) if task is not None]
            ids, execution_ids, tasks = ([items[i] for i in kept] for items in (ids, execution_ids, judged))
        if taken.parked:
            self._start_parked(queue, taken.parked, started_at, ids, execution_ids, tasks)
        new = {task.submission_id for task in tasks} - self._marked_started
        if new:
            with self.connection.pipeline() as pipe:
                for submission_id in new:
                    self.ingestor.records.mark_started(pipe, submission_id)
                run_pipeline(pipe)
            self._marked_started |= new
        if not ids:
            return True, None
        batch = _Batch(queue, ids, execution_ids, tasks, started_at)
        with self._held_lock:
            self._held.append(batch)
        return True, batch

    def _let_go(self, batch: _Batch) -> None:
        """Stop the heartbeats of a batch about to be finished or released: under the lock, so that no beat
        can land after it (a late HSET would re-create a deleted execution's key)."""
        with self._held_lock:
            if batch in self._held:
                self._held.remove(batch)

    def _start_parked(self, queue: Queue, parked: list[str], started_at: datetime, ids: list[str],
                      execution_ids: list[str], tasks: list[RowTask]) -> None:
        """Judge the parked jobs as Jobs; start those that are rows after all and add them to the batch."""
        accepted = [(job_id, task) for job_id in parked if (task := self._slow_row(queue, job_id)) is not None]
        if not accepted:
            return
        accepted_ids = [job_id for job_id, _ in accepted]
        accepted_executions = [secrets.token_hex(16) for _ in accepted]
        with self.connection.pipeline() as pipe:
            self._scripts.start(pipe, queue, self.name, defaults.HEARTBEAT_TTL, accepted_ids, accepted_executions,
                                started_at)
            gone = {raw.decode() for raw in run_pipeline(pipe)[0]}
        for job_id, execution_id, (_, task) in zip(accepted_ids, accepted_executions, accepted):
            if job_id not in gone:  # deleted between take and start (a withdrawn submission): nothing of it is kept
                ids.append(job_id)
                execution_ids.append(execution_id)
                tasks.append(task)

    def _slow_row(self, queue: Queue, job_id: str) -> RowTask | None:
        """The row of a parked job, or None if it is refused or no job at all."""
        try:
            job = CsvembedJob.fetch(job_id, connection=self.connection, serializer=SERIALIZER)
        except (NoSuchJobError, ResponseError):  # a key on the queue that is no job (anyone can push one): dropped
            self.connection.lrem(queue.intermediate_queue_key, 1, job_id)
            return None
        reason = refusal(job)
        if reason is None:
            return RowTask.from_job(job)
        self.connection.lrem(queue.intermediate_queue_key, 1, job.id)
        self._refuse(job, queue, reason)
        return None

    def _judge_started(self, queue: Queue, job_id: str, execution_id: str, started_at: datetime) -> RowTask | None:
        """The row of a started job whose data did not parse as a row's, or None after failing it (or after
        dropping it if it was deleted meanwhile)."""
        execution = Execution(execution_id, job_id, self.connection, worker_name=self.name)
        execution.created_at = execution.last_heartbeat = started_at
        try:
            job = CsvembedJob.fetch(job_id, connection=self.connection, serializer=SERIALIZER)
        except (NoSuchJobError, ResponseError):
            job = None
        if job is None:  # gone meanwhile: nothing of it is kept
            with self.connection.pipeline() as pipe:
                self._scripts.finish(pipe, queue, self.name, [job_id], [execution_id])
                run_pipeline(pipe)
            return None
        reason = refusal(job)
        if reason is None:
            return RowTask.from_job(job)
        self._refuse(job, queue, reason, execution)
        return None

    def _refuse(self, job: Job, queue: Queue, reason: str, execution: Execution | None = None) -> None:
        """Fail a job that is not a well-formed csvembed row, alone and for good.

        Anyone who can write to Redis can put a job on the queue: such a job must neither run nor
        stop the worker or its batch. Nothing it names is imported or called.
        """
        log.warning("job %r refused: %s", job.id, reason)
        job.ended_at = now()
        job.retries_left = 0  # its own Retry must not bring it back
        job.failure_ttl = defaults.FAILURE_TTL  # nor may it stay in Redis forever
        self.handle_job_failure(job, queue, exc_string=reason, execution=execution)

    def _finish(self, batch: _Batch, outcomes: list[Exception | Shape]) -> None:
        """Finish the stored rows in one script call; fail the others one by one (the rare path).

        Only ever called once the batch's transaction committed (on the Redis thread, handed on by the store's).
        """
        self._let_go(batch)
        tasks = batch.tasks
        stored = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, Shape)]
        stored_rows: dict[str, list[tuple[int, Shape]]] = defaultdict(list)
        for i in stored:
            stored_rows[tasks[i].submission_id].append((tasks[i].row_number, outcomes[i]))
        retried = [self._fail(batch, i, outcome) for i, outcome in enumerate(outcomes)
                   if isinstance(outcome, Exception)]
        with self.connection.pipeline() as pipe:
            if len(stored) == len(tasks):
                self._scripts.finish(pipe, batch.queue, self.name, batch.ids, batch.execution_ids)
            else:
                self._scripts.finish(pipe, batch.queue, self.name, [batch.ids[i] for i in stored],
                                     [batch.execution_ids[i] for i in stored])
            for submission_id, done in stored_rows.items():
                self.ingestor.records.mark_done(pipe, submission_id, done)
            seconds = (now() - batch.started_at).total_seconds()
            if stored:  # what RQ's handle_job_success counts per job
                pipe.hincrby(self.key, "successful_job_count", len(stored))
                pipe.hincrbyfloat(self.key, "total_working_time", len(stored) * seconds)
            batch_durations.record(pipe, batch.queue.name, seconds)
            if retried:
                pipe.hincrby(self.key, RETRIES, sum(fate is True for fate in retried))
                pipe.hincrby(self.key, ROWS_FAILED, sum(fate is False for fate in retried))
            run_pipeline(pipe)
        log.info("%d rows stored, %d failed, in %.1f s", len(stored), len(outcomes) - len(stored), batch.seconds)

    def _fail(self, batch: _Batch, index: int, error: Exception) -> bool | None:
        """Retry a transient failure; record a final one (with its reason) on the submission.

        Whether the row was retried (True), failed for good (False), or was deleted meanwhile (None).
        """
        task = batch.tasks[index]
        execution = batch.execution(index, self.connection, self.name)
        reason = str(error) if isinstance(error, RowError) else f"{type(error).__name__}: {error}"
        try:
            job = CsvembedJob.fetch(batch.ids[index], connection=self.connection, serializer=SERIALIZER)
        except NoSuchJobError:  # deleted with its submission meanwhile
            job = None
        if job is not None:
            job.ended_at = now()
            if isinstance(error, RowError):
                job.retries_left = 0  # the same row would fail the same way again
        if job is None or (not job.should_retry and not self.ingestor.records.mark_failed(
                None, task.submission_id, task.row_number, task.row_id, reason, permanent=isinstance(error, RowError))):
            with self.connection.pipeline() as pipe:  # its submission was deleted meanwhile: keep nothing
                self._scripts.finish(pipe, batch.queue, self.name, [batch.ids[index]], [execution.id])
                run_pipeline(pipe)
            return None
        retried = job.should_retry
        self.handle_job_failure(job, batch.queue, exc_string=reason, execution=execution)
        return retried


def run_worker(settings: Settings, queues: Sequence[str], burst: bool, batch_size: int, device: str = "auto",
               backend: str = "auto") -> bool:
    """Load the model once, then work until stopped (or until the queues are empty with burst).

    Returns whether any job was processed. `queues` are named as the user names them: the worker listens
    on their queues for its own model (csvembed.routing), so it never embeds rows submitted for another.
    """
    from csvembed.broker import connect
    from csvembed.embedder import choose_backend, load_embedder, resolve_model
    from csvembed.outage import open_when_reachable
    from csvembed.store import open_store
    from csvembed.submissions import SubmissionRecords

    queues = [model_queue(name, settings.model_id) for name in queues]
    device, backend = choose_backend(settings, device, backend)
    resolve_model(settings.model)  # a mistyped model path is an error even with nothing to do
    connection = connect(settings, wait_forever=True)
    if burst and not _has_work(connection, queues):
        # A script's unchanged re-run ends here: loading the model would take most of its time.
        log.info("nothing queued on %s", ", ".join(queues))
        return False
    # A burst run (a script's) fails at once, exit 3, while its store is unreachable: it holds no rows
    # yet, and its caller should know now, not after the model's load. A long-lived worker is a service: it waits.
    store = open_store(settings.db) if burst else open_when_reachable(lambda: open_store(settings.db))
    embedder = load_embedder(settings, device=device, backend=backend)
    ingestor = Ingestor(embedder, store, SubmissionRecords(connection))
    worker = BatchWorker(queues, ingestor=ingestor, batch_size=batch_size)
    log.info("worker %s: model %s loaded on %s (%s); listening on %s", worker.name, settings.model_id,
             embedder.device, embedder.backend, ", ".join(queues))
    worked = worker.work(burst=burst, logging_level="WARNING")
    if burst:  # the last batch may have finished a submission: its webhook gets a first try before exit
        Deliverer(connection).run_once()
    return worked


def _has_work(connection, queues: Sequence[str]) -> bool:
    """Rows queued, or started ones that a burst worker may find abandoned and requeue."""
    with connection.pipeline(transaction=False) as pipe:
        for name in queues:
            queue = Queue(name, connection=connection, serializer=SERIALIZER)
            pipe.llen(queue.key)
            pipe.llen(queue.intermediate_queue_key)
            pipe.zcard(queue.started_job_registry.key)
        return any(pipe.execute())
