"""The one exception type a user sees as a single clear line (``error: ...``)."""


class PipelineError(RuntimeError):
    """Bad input or environment: unknown model/dataset, Hub offline, layer out of range, disk full.

    The CLI prints ``error: <message>`` and exits with status 2, with no traceback; the message
    must therefore say what went wrong and what to do, on one line.
    """
