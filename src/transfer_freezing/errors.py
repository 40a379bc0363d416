"""The one exception type that reaches the user as a single line (what, where, what is allowed)."""


class UserError(Exception):
    """Bad input or environment: the CLI prints the message on one line and exits non-zero."""
