"""The errors sequifier raises for a user to read: a message, never a traceback."""


class SequifierError(Exception):
    """Bad input from the user; the CLI prints the message and exits with status 2."""


class ConfigError(SequifierError):
    """A config file or a command-line override is invalid."""


class DataError(SequifierError):
    """An input table (or a file derived from it) is invalid."""


class NumericError(SequifierError):
    """Numbers that stopped being numbers: a training loss, or a model's outputs, not finite."""


class ResourceError(SequifierError):
    """The machine ran out of something (memory, a worker process); the work can be resumed."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an error's message (at most `limit` characters), to quote in one of ours."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else "")[:limit]
