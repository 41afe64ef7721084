"""The wire: protobuf <-> domain translation shared by the gRPC adapters (server and client).
Only the adapters import it; the core and the engines never see protobuf."""
