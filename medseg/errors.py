"""One root exception for everything medseg reports to a user.

The CLI turns a ``MedsegError`` into a one-line message and its ``exit_code``; anything
else is a bug and keeps its traceback.
"""


class MedsegError(Exception):
    """A problem the user can act on (bad input, bad configuration, missing backend)."""

    exit_code = 1


class DicomInputError(MedsegError):
    """The DICOM input cannot be turned into one consistent image series."""

    exit_code = 2


class ConfigError(MedsegError):
    """A configuration value, model card or command-line option is invalid."""

    exit_code = 3


class ModelError(MedsegError):
    """A model file, its card or an inference backend failed."""

    exit_code = 4


class EngineUnavailableError(ModelError):
    """The requested inference backend is not installed on this machine."""


class PromptError(MedsegError):
    """A box or point prompt lies outside the volume or is malformed."""

    exit_code = 5


class OutputError(MedsegError):
    """The result could not be written (disk full, unwritable folder)."""

    exit_code = 6
