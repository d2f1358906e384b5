"""The one error tree of flair-deploy.

Every error a *user* can cause (bad file, bad option, missing optional dependency) derives from
:class:`FlairDeployError`. The CLI prints such an error as one line and exits with status 1; any other
exception is a bug in flair-deploy and keeps its traceback.

Messages say what was received, what was expected and how to fix it::

    FlairDeployError
    ├── ConfigError               invalid YAML, unknown key, inconsistent options
    ├── InputDataError            unreadable raster/CSV/JSON, wrong band count, bad mask values
    ├── CheckpointError           corrupt checkpoint, unknown key layout, class-count mismatch
    ├── ModelDescriptionError     missing or invalid self-description in an artifact
    ├── ExportError               ONNX/TensorRT conversion failure
    │   └── ParityError           an exported variant failed its parity gate
    ├── BackendError              runtime failure, provider missing, wrong device
    │   └── InputSpecError        a batch that does not match what the backend expects
    ├── OutputError               unwritable destination, refusing to overwrite
    └── MissingDependencyError    an optional extra (tensorrt, onnxruntime-gpu) is not installed
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "CheckpointError",
    "ConfigError",
    "ExportError",
    "FlairDeployError",
    "InputDataError",
    "InputSpecError",
    "MissingDependencyError",
    "ModelDescriptionError",
    "OutputError",
    "ParityError",
]


class FlairDeployError(Exception):
    """Root of every user-facing error; the CLI prints it as one line and exits 1."""


class ConfigError(FlairDeployError):
    """A configuration file or option is invalid or inconsistent."""


class InputDataError(FlairDeployError):
    """Input data (raster, CSV, mask, metadata JSON) is missing, unreadable or inconsistent."""


class CheckpointError(FlairDeployError):
    """A checkpoint cannot be read or does not match the expected layout."""


class ModelDescriptionError(FlairDeployError):
    """An artifact carries no, or an invalid, model description."""


class ExportError(FlairDeployError):
    """Converting a model to ONNX or TensorRT failed."""


class ParityError(ExportError):
    """An exported variant disagrees with PyTorch beyond its gate."""


class BackendError(FlairDeployError):
    """An inference runtime cannot be created or failed at run time."""


class InputSpecError(BackendError):
    """A batch given to a backend does not match its input specification."""


class OutputError(FlairDeployError):
    """An output cannot be written (exists without --overwrite, unwritable folder)."""


class MissingDependencyError(FlairDeployError):
    """An optional dependency is not installed; the message names the extra to install."""
