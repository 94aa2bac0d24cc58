"""The BPF C programs the end-to-end tests load, and the helpers that build them."""
