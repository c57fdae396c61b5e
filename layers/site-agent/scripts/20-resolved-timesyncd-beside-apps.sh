# systemd-resolved and systemd-timesyncd as packaged are ordered before sysinit.target, and so
# before every service with default dependencies: on a later boot under emulation the
# applications waited 2-3 s for resolved's start, which waits for the data partition (its
# state directory), journald and tmpfiles. Nothing on an appliance resolves names before
# sysinit.target; whatever resolves names later is ordered after nss-lookup.target or
# network.target, which both still are after them, and timers after time-set.target,
# which timesyncd still is before. The packaged units are copied here, as this release's
# systemd ships them, with only `sysinit.target` taken out of their Before=.
for unit in systemd-resolved.service systemd-timesyncd.service; do
    src=/usr/lib/systemd/system/$unit
    [ -f "$src" ] || src=/lib/systemd/system/$unit
    if ! grep -q '^Before=.*sysinit\.target' "$src"; then
        echo "outpost: $src is no longer ordered before sysinit.target; drop layers/site-agent/scripts/20-resolved-timesyncd-beside-apps.sh" >&2
        exit 1
    fi
    sed '/^Before=/s/ *sysinit\.target//' "$src" > "/etc/systemd/system/$unit"
done
