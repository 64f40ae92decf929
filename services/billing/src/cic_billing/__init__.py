"""CIC billing: the usage ledger in Postgres, priced per model in integer micro-dollars."""

from cic_common.grpc_io import use_polling_io

# Before anything of this service imports gRPC (see cic_common.grpc_io).
use_polling_io()
