"""The one exception type users see as a plain sentence instead of a traceback."""


class UserError(Exception):
    """A mistake in input, config or data that the user can fix.

    The message is one sentence saying what is wrong and what to do; the CLI prints it
    and exits non-zero.
    """
