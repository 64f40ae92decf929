"""CIC scheduler: the registry of vLLM nodes, their health, and the choice of a node per request."""

from cic_common.grpc_io import use_polling_io

# Before anything of this service imports gRPC (see cic_common.grpc_io).
use_polling_io()
