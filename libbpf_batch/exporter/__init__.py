"""The exporter: BPF maps as Prometheus metrics, read with batch lookups on every scrape.

``config`` reads ebpf_exporter-style YAML, ``decoders`` turns key bytes into label values,
``layout`` reads the map's BTF (the one place it is read), ``metrics`` turns one map's elements
into exposition text, ``sources`` loads objects and opens maps, ``server`` serves /metrics and
``command`` is the ``libbpf-batch export`` subcommand.
"""
