"""Exceptions a user can act on: the CLI prints their message instead of a traceback."""

from __future__ import annotations


class ServicesDown(RuntimeError):
    """A configured service (MLflow server) does not answer; the message says how to start it."""


class RegistryError(ValueError):
    """A registry request that cannot be carried out as asked (e.g. nothing to roll back to)."""


class ResultError(ValueError):
    """A committed result file (sweep cell, latency benchmark) that cannot be read as one; the
    message names the file and what is wrong with it."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Every error class whose message tells the user what to fix (imported lazily: cheap CLI)."""
    from alad.checkpoint import CheckpointError
    from alad.config import ConfigError
    from alad.data.corpus import EmptyCorpus
    from alad.data.readers import DataFormatError
    from alad.model import ModelFolderError
    from alad.models.packaged import ModelUnavailable
    from alad.models.tokens import TokenMismatch
    from alad.phases.align import NonFiniteLoss

    return (
        CheckpointError,
        ConfigError,
        DataFormatError,
        EmptyCorpus,
        FileNotFoundError,
        ModelFolderError,
        ModelUnavailable,
        NonFiniteLoss,
        RegistryError,
        ResultError,
        ServicesDown,
        TokenMismatch,
    )
