"""The one exception type that reaches users as a one-line message, and `one_line` to build it.

Raise `UserError` (or a subclass) for anything the user can fix: a bad path, a
bad flag, missing data, an unreachable store. The command-line entry points
print its message as a single line and exit with code 2; anything else is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment; str(err) is one line saying what to do."""


class DataError(UserError):
    """The dataset is missing, corrupt, or laid out wrongly."""


def one_line(text, limit: int | None = 500) -> str:
    """str(text) with every run of whitespace (newlines included) made one space; longer
    than `limit` characters (None: no limit), cut and ended with "..."."""
    line = " ".join(str(text).split())
    return line if limit is None or len(line) <= limit else line[:limit - 3] + "..."


def first_line(err: BaseException) -> str:
    """The first line of the error at the root of `err`: SQLAlchemy wraps the driver's error (.orig)
    and appends SQL and a help link on later lines, which a one-line message leaves out."""
    root = getattr(err, "orig", None) or err.__cause__ or err
    return one_line(str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__)
