"""Usage accounting and daily quotas: who used how much of the model servers (aigwd/usage/accountant.py), the
limits that follow (quotas.py), and the reports (report.py)."""

from .accountant import Accountant
from .meter import Meter, ask_for_usage

__all__ = ["Accountant", "Meter", "ask_for_usage"]
