"""GPU health and memory, read through NVML off the event loop."""

from .monitor import GpuMonitor
from .nvml import GpuReading, Nvml, NvmlUnavailable, XidEvent, open_nvml
from .verdict import Verdict, judge

__all__ = ["GpuMonitor", "GpuReading", "Nvml", "NvmlUnavailable", "Verdict", "XidEvent", "judge", "open_nvml"]
