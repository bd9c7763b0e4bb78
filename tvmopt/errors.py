"""The one exception type a user sees: its message is a sentence that says what to do."""


class TvmoptError(Exception):
    """A problem with the user's input or environment that they can fix.

    The CLI prints the message on one line and exits non-zero, without a traceback.
    """
