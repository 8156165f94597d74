"""Usage accounting and daily quotas: who used how much of the model servers (aigwd/usage/accountant.py), the
limits that follow (quotas.py), and the reports (report.py)."""

from .accountant import Accountant
from .meter import ADMITTED, Meter, ask_for_usage, take_admitted

__all__ = ["ADMITTED", "Accountant", "Meter", "ask_for_usage", "take_admitted"]
