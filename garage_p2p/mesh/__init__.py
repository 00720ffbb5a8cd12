"""The py-libp2p adapter: host assembly, library patches, stream plumbing."""
