"""The one exception type of the MFSC builder: messages name the file and say what to do."""


class BuildError(Exception):
    """A build step could not go on (bad input, bad backend answer, bad configuration)."""


class BuildInterrupted(BuildError):
    """Ctrl-C: finished parts are stored; the same command resumes."""
