"""The exporter: BPF maps as Prometheus metrics, read with batch lookups on every scrape.

``config`` reads ebpf_exporter-style YAML; ``sources`` loads objects (``elf`` lists their
programs), attaches programs and opens maps; ``rows`` reads key/value buffers as the fields
of the map's compiled BTF plan (``btf.Plan.fields``) and makes their text; ``decoders`` turns
key bytes into label values; ``metrics`` writes one map's families (``histogram`` has the bucket rules, ``text`` the
exposition formats); ``server`` serves /metrics and reloads; ``command`` is ``libbpf-batch
export``.
"""
