"""The one error type of `fsad_data`: raised for any bad data set input, with the path and the fix in the message."""


class DataError(Exception):
    """A data set file or folder cannot be used; the message names the path and says what to do."""


SKIP_HINT = "--on-error skip (on_error='skip' in Python)"
"""How every message about one bad file says it can be left out: the commands that read images (``mfsc build``,
``detector train/eval/predict/benchmark``) take ``--on-error skip``, the Python readers ``on_error='skip'``."""
