"""The errors a user can cause and fix: each message is one line naming the file or key and what to do.

Every one derives from `FastsrError`, which the CLI catches to print that line and exit 2 (anything else is
a bug in fastsr and keeps its traceback). Each also derives from the built-in kind it is (a bad value, a
failed operation, an OS error), so code that catches those keeps working. This module imports nothing:
every layer may raise these.
"""


class FastsrError(Exception):
    """Base of the errors a user can fix; the message is one line saying what to do."""


class RecipeError(FastsrError, ValueError):
    """A recipe, an override or a plugin is wrong; the message says where and what to do."""


class ImageError(FastsrError, ValueError):
    """A file or folder that cannot serve as image data; the message is one line naming it."""


class DownloadError(FastsrError, OSError):
    """An archive could not be fetched, verified or unpacked; the message is one line saying what to do."""


class DaliUnavailable(FastsrError, RuntimeError):
    """DALI cannot serve this run; the message says why and what to do."""


class WeightsError(FastsrError, ValueError):
    """A weights file or checkpoint cannot be used; the message names it and says why."""


class WeightsUnavailable(FastsrError, RuntimeError):
    """ImageNet weights could not be loaded (no network, a missing, unreadable or unknown file). Each user
    of `fastsr.pretrained` raises its own subclass, so a caller can tell the loss's weights from a metric's."""


class CheckpointWriteError(FastsrError, RuntimeError):
    """A checkpoint could not be written (e.g. the disk is full); the message names the one left intact."""


class ExportError(FastsrError, RuntimeError):
    """The model could not be exported, or its graph does not compute what the model does."""


class OutOfMemory(FastsrError, RuntimeError):
    """The device ran out of memory; the message says which knob lowers the need."""


class NonFiniteLoss(FastsrError, RuntimeError):
    """A loss became NaN or infinite and the run stopped; the message names the step and what to do."""


class RunDirLocked(FastsrError, RuntimeError):
    """Another live run holds the run directory; the message names it and the holder."""


class LostProcess(FastsrError, RuntimeError):
    """Another process of the run died, hung or failed; the message names it where it can be known."""
