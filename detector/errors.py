"""The detector package's one error type: the CLI prints its message as one red line and exits 1."""


class DetectorError(Exception):
    """A user-facing detector failure; the message names the file and says what to do."""
