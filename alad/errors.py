"""Exceptions a user can act on: the CLI prints their message instead of a traceback."""

from alad.checkpoint import CheckpointError
from alad.config import ConfigError
from alad.data.corpus import EmptyCorpus
from alad.data.readers import DataFormatError
from alad.model import ModelFolderError
from alad.models.packaged import ModelUnavailable
from alad.models.tokens import TokenMismatch
from alad.phases.align import NonFiniteLoss

USER_ERRORS: tuple[type[BaseException], ...] = (
    CheckpointError,
    ConfigError,
    DataFormatError,
    EmptyCorpus,
    FileNotFoundError,
    ModelFolderError,
    ModelUnavailable,
    NonFiniteLoss,
    TokenMismatch,
)
