"""The one user-facing error type.

Every problem caused by the user's input (a missing or corrupt file, an unknown class or split name, an
empty class list, ...) is raised as :class:`ZeroSegError` with a one-line message that names the file or
value and the problem. The CLI prints it as ``zeroseg: error: <message>`` and exits with status 2, so the
user never sees a traceback from deep inside torch.
"""


class ZeroSegError(ValueError):
    """A user-facing error whose message is one line naming the culprit and the problem."""
