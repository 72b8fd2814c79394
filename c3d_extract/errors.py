"""One family for every error this package raises on purpose; str() is one line for the user that
names the file and the problem. The command-line tools turn the family into exit statuses in one
place (cli/errors.py); the library never exits.

    C3DError
    ├── UsageError    a bad argument or input file (not a video, weights, feature file, split file):
    │                 nothing was started or changed
    ├── Refused       a request declined to keep what exists intact (an OUTPUT with other settings,
    │                 a journal another run holds)
    ├── Failure       something tried and failed on the way: a video, a download, a conversion
    ├── RemoteError   an object store refused the run before it started: credentials, bucket, endpoint
    └── StorageError  the disk is full or failing (storage.py): what was saved is said
"""

from __future__ import annotations


class C3DError(Exception):
    """Base of the family."""


class UsageError(C3DError, ValueError):
    """A bad argument or input file; nothing was started or changed."""


class Refused(C3DError):
    """Declined, so that what exists stays as it is."""


class Failure(C3DError):
    """Something tried and failed: a video, a download, a conversion."""


class RemoteError(C3DError):
    """An object store (s3://, gs://, http) refused the run before any work: wrong credentials, an
    unknown bucket, an endpoint that cannot be reached. Nothing was started or changed."""
