"""The base of every error caused by user input (a file, a line, a config key, a parameter).

The CLI prints these as one line without a traceback; anything else is a bug and keeps its trace.
"""


class UserError(ValueError):
    """Bad input: the message names the file/line, key or parameter and what was expected."""
