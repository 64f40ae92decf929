"""CIC scheduler: the registry of vLLM nodes, their health, and the choice of a node per request."""
