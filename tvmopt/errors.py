"""The one exception type a user sees: its message is a sentence that says what to do."""

import re


class TvmoptError(Exception):
    """A problem with the user's input or environment that they can fix.

    The CLI prints the message on one line and exits non-zero, without a traceback.
    """


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (TVM's run to pages), for one-line errors."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:limit]


def onnxruntime_cause(e: Exception) -> str:
    """ORT's message without its prefix and the C++ location and signature it puts before the
    cause ("...failed:/onnxruntime_src/...cc:256 onnxruntime::Model::Model(...) Unsupported...")."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", " ".join(str(e).split()))
    start = text.find("/onnxruntime_src/")
    open_paren = text.find("(", start)
    if start < 0 or open_paren < 0:
        return text[:300]
    depth = 0
    for end in range(open_paren, len(text)):
        depth += {"(": 1, ")": -1}.get(text[end], 0)
        if depth == 0:
            return (text[:start] + " " + text[end + 1:].strip())[:300]
    return text[:300]


def compiler_cause(e: BaseException, limit: int = 300) -> str:
    """The line of a compiler's or linker's output that says what went wrong (TVM's wrapper
    puts "Compilation error:" first and the compiler's own words after it)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    causes = [line for line in lines if line.rstrip(":").lower() != "compilation error"
              and any(w in line.lower() for w in ("error", "no space", "cannot", "denied",
                                                  "not found", "killed"))]
    rest = [line for line in lines if line.rstrip(":").lower() != "compilation error"]
    return ((causes or rest or lines or [type(e).__name__])[0])[:limit]

