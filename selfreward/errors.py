"""The one base of every error a user can mend: `selfreward` prints it as one line and exits with code 2.

Its subclasses live beside what raises them: `config.ConfigError` (a config file or override),
`artifacts.DataError` (a data file), `runs.StageChanged` (a finished stage whose inputs changed),
`reporting.summary.WhereError` (a bad `inspect --where`), `server.ServerError` (an inference server that
did not start or refused a request).
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input, not a bug: the message says what to change (file, line, key)."""
