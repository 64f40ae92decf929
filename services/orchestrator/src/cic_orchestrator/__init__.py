"""CIC orchestrator: GPU node lifecycle (launch, health, retire) through SkyPilot."""

from cic_common.grpc_io import use_polling_io

# Before anything of this service imports gRPC (see cic_common.grpc_io).
use_polling_io()
