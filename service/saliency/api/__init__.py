"""The gRPC API: protobuf conversion, servicer, server assembly, interceptors."""
