"""Code every CIC service shares; nothing here runs at import time."""
