"""The one exception type that reaches the user as a single line (what, where, what is allowed)."""


class UserError(Exception):
    """Bad input or environment: the CLI prints the message on one line and exits non-zero."""


def first_line(err: BaseException) -> str:
    """The first non-blank line of an exception's message (its type name if it has none)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
