"""The base class of errors a user causes or can fix (a bad setting, an unknown collection or
job, a service not started, an API that refused a request).

The CLI prints them as one line and exits 1; any other exception is a bug and keeps its
traceback. Each subclass also derives from the built-in error it refines (LookupError,
ValueError, RuntimeError), so callers that catch those still do.
"""


class UserError(Exception):
    """An error whose message tells the user what to change."""
