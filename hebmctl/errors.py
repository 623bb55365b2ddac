"""Errors that reach the user as a one-paragraph message (the CLI prints them and exits 2).

Raise these for bad input: missing or corrupt files, wrong shapes, mismatched lineage, unknown
data specs. The message must say what is wrong and what to do about it. Anything else that
escapes is a bug and keeps its traceback.
"""


class HebmctlError(Exception):
    """Base class of every user-facing error."""


class DataError(HebmctlError):
    """A data spec is unknown or malformed, or the data files are missing or unreadable."""


class ArtifactError(HebmctlError):
    """An artifact folder is missing, incomplete, corrupt, or of the wrong kind."""


class LineageError(HebmctlError):
    """Two artifacts do not descend from each other as the stage requires."""


class DivergenceError(HebmctlError):
    """Training produced a non-finite loss or energy and could not recover."""


class ConfigError(HebmctlError):
    """A setting is valid on its own but impossible with these inputs (e.g. a temperature that overflows)."""
