"""Errors raised for input that medidiff refuses. The message is one line that
names the file and the reason, so batch logs and scores tables stay readable."""


class ScanError(Exception):
    """A file or series that cannot be used as a 3D scan."""

    def __init__(self, path: object, reason: str, hint: str | None = None):
        self.path = str(path)
        self.reason = reason
        self.hint = hint
        msg = f"{self.path}: {reason}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)
