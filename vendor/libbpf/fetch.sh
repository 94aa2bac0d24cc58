#!/usr/bin/env bash
# The libbpf pin's fetch: vendor/fetch.sh libbpf [DEST_DIR] (kept for the path people know).
exec "$(dirname "${BASH_SOURCE[0]}")/../fetch.sh" libbpf "$@"
