"""Execution traces: capture, one graph type, statistics, Chakra export, replay and what-if synthesis."""

from recstack.trace.capture import CaptureOptions, capture
from recstack.trace.graph import Arg, CommInfo, OpNode, TensorRef, TraceGraph
from recstack.trace.load import load_ranks, load_trace, read_et

__all__ = [
    "Arg", "CaptureOptions", "CommInfo", "OpNode", "TensorRef", "TraceGraph", "capture", "load_ranks",
    "load_trace", "read_et",
]
