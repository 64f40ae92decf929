"""CIC gateway: the OpenAI-compatible edge for tenants and the admin API for operators."""

from cic_common.grpc_io import use_polling_io

# Before anything of this service imports gRPC (see cic_common.grpc_io).
use_polling_io()
