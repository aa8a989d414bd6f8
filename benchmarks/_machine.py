"""What every benchmark prints about the machine it ran on (CPU, usable cores, ISA, OS)."""

from recstack.machine import cpu_facts

__all__ = ["cpu_facts"]
