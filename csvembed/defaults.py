"""Every tunable default in one place, with the measurement or reason behind it."""

QUEUE_NAME = "csvembed"
MODEL_NAME = "all-MiniLM-L6-v2"

# Rows read per pandas chunk: large enough for pandas' C parser to be efficient, small enough
# that memory stays flat (a few MB) however big the file is. submit sorts each chunk by text
# length before enqueueing it, so a worker's batch holds rows of similar length (little padding).
READ_CHUNK_ROWS = 5_000
# Bytes looked at to detect the encoding and sniff the delimiter.
SNIFF_BYTES = 64 * 1024
# The most columns a file may have: Excel's own limit. pandas builds an object per column per chunk, so
# a header of a million columns took 164 s and 2.3 GB to submit one row (100,000: 11.4 s, 354 MB); a
# header this wide takes 2.4 s. A wider one is refused as pandas reads it, in 0.75 s.
MAX_COLUMNS = 16_384

# The longest row id and collection name, in UTF-8 bytes. PostgreSQL's btree refuses an index entry
# over 2704 bytes (a third of a page), and a row's key is (collection, id): two keys of 1,000 bytes fit
# with room for the entry's overhead, in any script (UTF-8 takes up to 4 bytes a character). SQLite has
# no such limit, but the same one applies there, so a file that goes into one store goes into the other.
MAX_KEY_BYTES = 1_000
# Characters of an id shown in a failure record when the id itself is what is wrong (too long).
SHOWN_ID_CHARS = 80

# Rows per call of the enqueue Lua script (enqueue.py): one round trip each, and a reader interrupted
# mid-file leaves at most this many rows to withdraw from the last call.
ENQUEUE_CHUNK = 1_000
# Rows a worker takes from the queue at once; they are embedded in one model call.
BATCH_SIZE = 256
# The largest --batch-size: a batch is taken in one Lua call and held whole (16x the largest measured, 4096);
# a larger one only exhausts memory (the take's execution ids alone are 16 bytes a row).
MAX_BATCH_SIZE = 65_536
# The batch size passed to SentenceTransformer.encode for a transformer on the CPU (longer batches
# were slower on 2 cores).
ENCODE_BATCH_SIZE = 32
# ... and for a static (token lookup) model or any model on a GPU: the worker's whole batch in one
# call (capped only by --batch-size); 32 rows per call left a static model at a fraction of its speed.
WHOLE_BATCH_ENCODE = 65_536
# Characters of a text handed to the tokenizer, per token the model reads (max_seq_length). A
# 50 MB field made a worker reach 3.9 GB while tokenizing, though the model reads 256 tokens.
# WordPiece turns any word over 100 characters into one [UNK] (BPE and unigram pieces are shorter
# still), so a token spans at most about 100 characters plus the whitespace before it: 128 per
# token (32,768 characters for 256 tokens) cannot cut a token the model would read unless words
# are separated by ~28 whitespace characters on average.
CHARS_PER_TOKEN = 128
# Tokens of one text a static (token lookup) model reads at most; such models have no length limit.
STATIC_MAX_TOKENS = 8192

# Per-row job settings. The vector lives in SQLite, so no RQ result is kept at all.
JOB_TIMEOUT = 600
RESULT_TTL = 0
# RQ keeps failed jobs; the reason is also in the submission's own record, so a week is plenty.
FAILURE_TTL = 7 * 24 * 3600
# Attempts after the first, for transient errors and for rows whose worker died.
MAX_RETRIES = 3

# A started row whose worker stops heart-beating for this long is considered abandoned.
HEARTBEAT_TTL = 15
HEARTBEAT_INTERVAL = 5
# A running submit renews a lease this long, this often (also while --max-pending holds it); once
# the lease lapses the submission reads as interrupted, so a killed submit is seen within 15-20 s.
SUBMIT_LEASE_TTL = 15
SUBMIT_LEASE_INTERVAL = 5
# How often a worker looks for rows abandoned by dead workers (RQ's default is 600 s).
REAPER_INTERVAL = 5
# RQ blocks an idle worker on the queue for WORKER_TTL - 15 s between maintenance runs, so this
# bounds how long an idle worker takes to notice abandoned rows.
WORKER_TTL = 20

# How often a worker re-counts the workers on its host to share the cores among them.
CPU_SHARE_INTERVAL = 10.0

# A worker whose store cannot be reached keeps its rows and tries again after BASE seconds, doubling
# up to CAP: it resumes at most CAP seconds after the store is back. Each try is one connect attempt.
STORE_RETRY_BASE = 1.0
STORE_RETRY_CAP = 10.0
# How often a waiting worker looks whether it was asked to stop (SIGTERM).
STOP_POLL = 0.1

# SQLite: wait this long for another writer's lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000

# How long commands wait for Redis before giving up on it.
REDIS_CONNECT_TIMEOUT = 5.0
# After a lost connection: exponential backoff from BASE up to CAP seconds. Commands people run give
# up after REDIS_RETRIES attempts (about half a minute); workers never give up.
REDIS_RETRY_BASE = 0.2
REDIS_RETRY_CAP = 5.0
REDIS_RETRIES = 8
# Once a worker is asked to stop, it tries an unreachable Redis for this long more, then gives up: the
# rows it holds are requeued by the other workers once its heartbeat lapses (HEARTBEAT_TTL).
REDIS_STOP_GRACE = 1.0
# The embedded redis-server: how long to wait for it to accept connections.
LOCAL_REDIS_START_TIMEOUT = 10.0

# Webhooks (--notify): how often each worker's deliverer looks for due notifications; how long a POST
# may take; how long a deliverer holds one it took (past the timeout, so only a dead one loses it);
# the backoff after a failure, doubling from BASE up to CAP seconds; and when to give up (about an
# hour after the first try: 5, 10, 20 ... 320 s, then every 10 min).
NOTIFY_POLL_INTERVAL = 1.0
NOTIFY_TIMEOUT = 10.0
NOTIFY_LEASE = 30.0
NOTIFY_BACKOFF_BASE = 5.0
NOTIFY_BACKOFF_CAP = 600.0
NOTIFY_GIVE_UP = 3600.0

# status: refreshes per second of the live view.
STATUS_REFRESH_PER_SECOND = 4
# The rate of a running submission spans at least this long between two moments rows finished (and
# at least one whole batch), so long batches do not make it jump; finished ones show their average.
RATE_WINDOW_SECONDS = 30.0
# Moments (time, rows finished) kept per submission for that rate.
RATE_SAMPLES = 64
# How many submissions `status` without an id shows.
RECENT_SUBMISSIONS = 10
# Failure reasons shown in the live view.
RECENT_FAILURES = 3

SEARCH_K = 5
# SQL's LIMIT (SQLite and PostgreSQL) is a signed 64-bit integer: a larger -k is the user's mistake, not a crash.
SEARCH_MAX_K = 2**63 - 1
# Redis indexes are signed 64-bit integers: a larger count (list --limit) is the user's mistake, not an outage.
REDIS_MAX_INT = 2**63 - 1
# pgvector HNSW candidates per query (at least 2k). Over 1M clustered rows (bench/pgvector_bench.py):
# 40 -> recall@10 0.70 in 3.7 ms, 100 -> 0.75 in 4.0 ms, 200 -> 0.88 in 4.8 ms (medians).
HNSW_EF_SEARCH = 200
# A filtered PostgreSQL search (--collection, --submission, --where) that matches at most this many
# windows ranks them all exactly instead of walking the HNSW index, which may stop before it finds k of
# a small collection among many other rows (it gives up after hnsw.max_scan_tuples).
EXACT_SEARCH_WINDOWS = 20_000

# csvembed serve. Loopback unless a token is set (see csvembed/web/auth.py).
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8000
# Largest upload accepted (bytes, compressed as sent); the body is spooled to a private temp file.
MAX_UPLOAD = 2 * 1024**3
# A client that sends no byte of its upload for this long is cut off (408), so it holds no worker.
UPLOAD_READ_TIMEOUT = 60.0
# Seconds between two server-sent events.
EVENTS_INTERVAL = 1.0
# uvicorn: idle keep-alive connections closed after this long; over this many connections, 503.
KEEP_ALIVE_TIMEOUT = 5
MAX_CONNECTIONS = 100
