"""The one error type of `fsad_data`: raised for any bad data set input, with the path and the fix in the message."""


class DataError(Exception):
    """A data set file or folder cannot be used; the message names the path and says what to do."""
