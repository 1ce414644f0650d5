"""The exceptions callers catch by meaning. The CLI turns each into one line and an exit code."""

# Exit codes, documented in --help and the README.
EXIT_OK = 0
EXIT_ROWS_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
# Ctrl-C: 128 + SIGINT, as shells report it.
EXIT_INTERRUPTED = 130


class CsvembedError(Exception):
    """Base class: a problem explained to the user in one line."""

    exit_code = EXIT_BAD_INPUT


class InputError(CsvembedError):
    """The user's input (file, options, arguments) is wrong."""


class UnknownSubmission(CsvembedError):
    """No submission has this id."""

    def __init__(self, submission_id: str) -> None:
        super().__init__(f"no submission with id {submission_id!r}")


class ServiceUnavailable(CsvembedError):
    """Redis or the store cannot be reached or used."""

    exit_code = EXIT_UNAVAILABLE


class RowError(Exception):
    """One row cannot be embedded or stored, for good: it fails alone and is not retried."""


class NoStore(InputError):
    """A reader (search, export) found nothing stored at --db: no file, or no row ever stored."""

    def __init__(self, db: str) -> None:
        super().__init__(f"no store at {db}: nothing has been stored there yet")
