"""The exceptions that reach the user as one line: bad input (what, where, what is allowed), SIGTERM."""


class UserError(Exception):
    """Bad input or environment: the CLI prints the message on one line and exits non-zero."""


def first_line(err: BaseException) -> str:
    """The first non-blank line of an exception's message (its type name if it has none)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM (``dvc``, a scheduler or ``kill`` stopping the process), handled like Ctrl-C."""
