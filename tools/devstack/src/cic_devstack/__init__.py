"""Runs the whole CIC platform on one machine as separate processes talking gRPC."""
