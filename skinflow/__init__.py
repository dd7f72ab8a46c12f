"""skinflow: a Lightning experiment kit for dermatology vision-language models (SkinFlow reproduction)."""

__version__ = "0.1.0"
