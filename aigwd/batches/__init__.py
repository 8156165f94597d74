"""The OpenAI Batch API's engine: files on disk, input checks, and the runner that feeds lines to the queues."""

from .files import FileStore
from .runner import BatchRunner, LineSubmitter

__all__ = ["BatchRunner", "FileStore", "LineSubmitter"]
