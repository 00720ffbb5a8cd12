"""The py-libp2p adapter: host assembly, library patches, stream plumbing."""

import dns._features

# py-libp2p imports multiaddr's DNS resolver, and dnspython then loads its DNS-over-HTTPS and
# DNS-over-QUIC clients (httpx2, httpcore2, dns.quic) whenever they are installed: ~0.1 CPU-s of
# every daemon start, for transports libp2p never uses (a /dns4/ address is resolved over plain
# DNS). Switched off before any libp2p import: every one goes through this package.
if hasattr(dns._features, "force"):
    dns._features.force("doh", False)
    dns._features.force("doq", False)
