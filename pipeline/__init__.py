"""ENGINE pipeline: textual graphs, a frozen LLM's cached rungs, a G-Ladder side GNN."""

__version__ = "0.1.0"
