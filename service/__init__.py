"""dnirecon's gRPC reconstruction service and scanner-side client. Imports neither torch nor training."""
