"""Generated gRPC stubs for protos/dnirecon/v1/recon.proto (`make proto`); do not edit."""
