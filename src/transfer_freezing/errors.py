"""The exceptions that reach the user as one line: bad input (what, where, what is allowed), SIGTERM."""


class UserError(Exception):
    """Bad input or environment: the CLI prints the message on one line and exits non-zero."""


def first_line(err: BaseException) -> str:
    """The first non-blank line of an exception's message (its type name if it has none)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM (``dvc``, a scheduler or ``kill`` stopping the process), handled like Ctrl-C."""


def require_table(table, columns, name: str, empty_reason: str) -> None:
    """One line if ``table`` (a DataFrame) lacks one of ``columns`` or has no rows."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserError(f"{name} lacks column(s) {', '.join(missing)}; required: {', '.join(columns)}")
    if table.empty:
        raise UserError(f"{name} is empty: {empty_reason}")
