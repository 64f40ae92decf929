"""cic-node-agent: the agent CIC runs beside vLLM on every GPU node."""

__version__ = "0.1.0"
