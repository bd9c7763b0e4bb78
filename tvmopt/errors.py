"""The one exception type a user sees: its message is a sentence that says what to do."""


class TvmoptError(Exception):
    """A problem with the user's input or environment that they can fix.

    The CLI prints the message on one line and exits non-zero, without a traceback.
    """


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (TVM's run to pages), for one-line errors."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:limit]
