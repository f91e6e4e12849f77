"""Errors a user can act on: one base class, so every door handles them the same way.

    alad finetune --train broken.conllu ...   # -> "alad: error: broken.conllu:12: ..." (exit 2)

Every mistake in what a user gives alad (a config value, a data file, a checkpoint or model
folder, a request the model cannot serve) raises a subclass of `AladError` whose message names
the file (and line or field where there is one) and what to do. The CLI prints it as one
`alad: error:` line instead of a traceback; the Prefect flow does not retry it (it would fail the
same way again). Anything else is a bug or a crash and keeps its traceback.
"""

from __future__ import annotations


class AladError(Exception):
    """A mistake in the user's input, config or files; the message says what to fix."""


class DataFormatError(AladError, ValueError):
    """A data file is malformed; the message names file, line (or JSON field) and what was
    expected. Also raised for files that are not UTF-8."""


class UsageError(AladError, ValueError):
    """A request that cannot be served as asked (e.g. tagging text with a QA model)."""


class ServicesDown(AladError, RuntimeError):
    """A configured service (MLflow server) does not answer; the message says how to start it."""


class RegistryError(AladError, ValueError):
    """A registry request that cannot be carried out as asked (e.g. nothing to roll back to)."""


class ResultError(AladError, ValueError):
    """A committed result file (sweep cell, latency benchmark) that cannot be read as one; the
    message names the file and what is wrong with it."""


def user_errors() -> tuple[type[BaseException], ...]:
    """What the CLI reports as `alad: error:` and Prefect does not retry: every `AladError`
    (CheckpointError, ConfigError, DataFormatError, ... all derive from it) and a missing file."""
    return (AladError, FileNotFoundError)
