"""The exporter helper: what every queued exporter shares, so an exporter is only "send this chunk".

An exporter builds a :class:`Sender` (write a chunk of encoded records, say what happened) and is a
:class:`QueuedExporter` (a subclass handing it the sender and its encoding), whose ``consume``,
``start``, ``shutdown``, ``failing_since`` and ``queued`` it inherits: a bounded sending queue counted in
records (in memory, or on disk with ``storage: file``), ``num_consumers`` tasks draining it, retry
with exponential backoff and jitter, the drain deadline at shutdown, ``failing_since`` for health,
and the standard telemetry (label ``exporter``): ``exporter_sent_records``,
``exporter_send_failed_records``, ``exporter_enqueue_failed_records``, ``exporter_queue_size``,
``exporter_queue_capacity``, ``exporter_lost_records`` and, for the persistent queue,
``exporter_queue_corrupt_records`` and ``exporter_queue_storage_errors``.

Inside a transaction (:mod:`webrtc_observer.transaction`) ``consume`` only reserves room and
registers the enqueue as a commit callback: a refused message leaves no copy in any queue, and with
the persistent queue the commit writes (and fsyncs) the records, so they are durable before the
receiver answers 202.
"""

from ._config import QueuedExporterConfig, RetryOnFailureConfig, SendingQueueConfig, renamed_options
from ._exporter import QueuedExporter, Sender, SendError

__all__ = [
    "QueuedExporter",
    "QueuedExporterConfig",
    "RetryOnFailureConfig",
    "SendError",
    "Sender",
    "SendingQueueConfig",
    "renamed_options",
]
