# Sourced by the scripts that need Debian's archive without changing /etc/apt: apt on a private
# state (sources, lists, cache under $1) derived from this machine's own deb sources, so no
# archive host is written in this repository.
#
#   private_apt STATE_DIR deb-src      source packages (apt-get source)
#   private_apt STATE_DIR deb ARCH     binary packages of a foreign ARCH (apt-get download)
# Sets the array apt_opts; run `apt-get "${apt_opts[@]}" update` once before use.
private_apt() {
    local state=$1 kind=$2 arch=${3:-} f
    mkdir -p "$state/sources.list.d" "$state/lists/partial" "$state/cache/archives/partial"
    : > "$state/sources.list.d/private.sources"
    : > "$state/sources.list.d/private.list"
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # Sources restricted to some architectures are third-party extras: never needed here.
        grep -qi '^Architectures:' "$f" && continue
        sed -e "s/^Types:.*\bdeb\b.*/Types: $kind/" "$f" >> "$state/sources.list.d/private.sources"
        echo >> "$state/sources.list.d/private.sources"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        sed -n -e "s/^[[:space:]]*deb[[:space:]]/$kind /p" "$f" >> "$state/sources.list.d/private.list"
    done
    apt_opts=(
        -o "Dir::Etc::SourceList=/dev/null"
        -o "Dir::Etc::SourceParts=$state/sources.list.d"
        -o "Dir::State::Lists=$state/lists"
        -o "Dir::State::Status=$state/status"
        -o "Dir::Cache=$state/cache"
        -o "APT::Sandbox::User=root"
        -q
    )
    touch "$state/status"
    if [ -n "$arch" ]; then
        apt_opts+=(-o "APT::Architecture=$arch" -o "APT::Architectures::=$arch")
    fi
}
