"""The base of every error caused by user input (a file, a line, a config key, a parameter).

The CLI prints these as one line without a traceback; anything else is a bug and keeps its trace.
"""


class UserError(ValueError):
    """Bad input: the message names the file/line, key or parameter and what was expected."""


class ConfigError(UserError):
    """A config key is missing or holds a value of the wrong kind."""


class Preempted(RuntimeError):
    """SIGTERM arrived (SLURM preemption, ``scancel``, requeue) and the training state was saved:
    running the same command again resumes from it."""
