"""User-facing errors.

A ``UserError`` is a mistake the user can fix (a missing file, a bad flag value, ...). The CLI prints it as
one line -- what is wrong and how to fix it -- and exits non-zero, without a traceback. Library callers get
an ordinary exception (it subclasses ``ValueError``) they can catch.
"""


class UserError(ValueError):
    """A problem with the user's input; the message names the problem and the fix."""

    exit_code = 2
