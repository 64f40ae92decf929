"""CIC gateway: the OpenAI-compatible edge for tenants and the admin API for operators."""
