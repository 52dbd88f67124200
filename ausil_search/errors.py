"""Errors a user can cause. The CLI prints these as one line and exits non-zero; anything else is a bug."""


class AusilError(Exception):
    """Base class for expected, user-facing failures."""


class InputError(AusilError):
    """A media file that cannot be used: missing, empty, corrupt, or without an audio stream."""


class WeightsError(AusilError):
    """A weight file that is missing, corrupt, of the wrong format, or fails its checksum."""


class IndexStoreError(AusilError):
    """An index directory that is missing, locked, or was built with another model or front-end."""


class DiskFullError(AusilError):
    """A disk (the index's, or the temporary directory's) has no room left; what was committed is kept."""
