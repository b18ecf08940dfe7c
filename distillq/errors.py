"""Errors a user can hit. Each message names the thing that is wrong and how to fix it.

The CLI prints these on one line, without a traceback, and exits non-zero.
"""

from __future__ import annotations


class DistillqError(Exception):
    """Base class for errors whose message is meant for the user as it is."""


class SpecError(DistillqError):
    """The job spec (YAML or --set overrides) is invalid."""


class DataError(DistillqError):
    """The dataset cannot be read or has no usable records."""


class ModelError(DistillqError):
    """A model or tokenizer cannot be loaded, or teacher and student do not fit together."""


class BrokerError(DistillqError):
    """Redis cannot be reached."""


class JobNotFound(DistillqError):
    """No job with this id exists on the configured storage."""


class CacheError(DistillqError):
    """A teacher cache file is missing, corrupt, or was made for something else."""


class StorageFull(DistillqError):
    """Shared storage ran out of space (or a file-size limit) while writing."""


class JobStopped(DistillqError):
    """The job was paused or cancelled by the user; work that had not started is parked."""


class Superseded(DistillqError):
    """A later attempt of the same work started while this one ran (its node was presumed
    dead, cut off from Redis): this attempt's results are refused where they would be
    published (the fence, storage/atomic.py), and the later attempt's stand."""


class RecordError(DistillqError):
    """A record on storage is missing a field (an older distillq wrote it) or is malformed."""


class ExportError(DistillqError):
    """A trained model cannot be exported to the asked format (architecture, tokenizer)."""


class TransientError(DistillqError):
    """Another try later may succeed (a server that is down now): the task retry path applies,
    with its back-off and attempt cap, where other DistillqErrors fail at once."""


class EndpointError(DistillqError):
    """A teacher endpoint (vLLM, llama.cpp, an OpenAI-compatible API) refused or failed."""


class EndpointDown(EndpointError, TransientError):
    """Every endpoint of a teacher stayed unreachable through the retry budget."""


class JobFailed(DistillqError):
    """A task of the job failed for good (its attempts spent, or a user error in the data)."""


class JobCancelled(DistillqError):
    """The job was cancelled while someone waited for it."""


class WaitTimeout(DistillqError):
    """The job was not done within a wait's timeout, or stopped moving for its ``stall``."""
