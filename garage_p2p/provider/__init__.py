"""The serving side: admission, forwarding to the local backend, metering."""
