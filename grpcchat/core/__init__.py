"""The chat core: domain types, rules, errors, limits, and the hub that numbers and fans out
messages to bounded per-session queues. Pure asyncio: no gRPC, no protobuf, no engine.

Engines plug in through the Protocols defined here (`history.HistoryStore`); the composition
root (`grpcchat.server`) chooses the implementations.
"""
