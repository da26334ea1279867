"""HakuRiver: a lightweight, self-hosted CPU cluster manager."""

__version__ = "0.2.0"
