"""One object per served model (its queue, replicas, their modes, its readiness) and the events it announces."""

from .events import Event, Events, Finished, ModeChanged, ReadinessChanged, Submitted
from .modelservice import ModelService, queue_limits
from .replica import Replica

__all__ = ["Event", "Events", "Finished", "ModeChanged", "ModelService", "ReadinessChanged", "Replica",
           "Submitted", "queue_limits"]
