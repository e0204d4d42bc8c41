"""dsim: decentralized learning simulator."""
__version__ = "0.1.0"
