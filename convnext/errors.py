"""The one exception type for people's mistakes (a bad path, an unknown name, a corrupt file).

The command line prints its message as one sentence and exits non-zero, with no traceback; library
callers can catch it. It subclasses ValueError so that `except ValueError` keeps working.
"""


class UserError(ValueError):
    pass
