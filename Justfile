# Thin recipes; CI runs the same commands as the README.

# Build an image (default: the Ubuntu 24.04 demo appliance) into out/NAME
build image="images/demo.toml":
    cargo run --release -- build {{image}} --out out/$(basename {{image}} .toml)

# Unit and tool tests: seconds
test:
    cargo test --release

# Every build and boot test (one per scenario and per image, each image built once), with a
# table of each test's time at the end
boot-test:
    cargo test --release -- --ignored

# The scenarios too long for CI's budget (src/e2e/scenarios.rs, LONG): update-rollback
long-scenarios:
    OUTPOST_E2E_LONG=1 cargo test --release --test e2e -- --include-ignored scenario::update-rollback

# One end-to-end test alone, e.g. `just e2e scenario::encryption` (`just e2e images::` for all
# reproducibility tests)
e2e name:
    cargo test --release --test e2e -- --include-ignored {{name}}

# Everything #19 measures, as one table (figure, value): the Debian test image's cold build, the
# same with only the package pool kept, the warm rebuild after editing the top layer, a bare
# mmdebstrap of the same packages, output sizes; personalize; encrypted output; under QEMU the
# first and a later boot (power-on to the status page answering, to the boot's verdict, and the
# data partition's encryption and unlock) with a 1 GiB and a 10 GiB data partition; then the
# PACS stack (bench-pacs) and the delivery outputs (bench-delivery)
bench:
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release -q
    t=$(mktemp -d /var/tmp/outpost-bench-all.XXXXXX)
    trap 'rm -rf "$t"' EXIT
    { just bench-debian; just bench-pacs; just bench-delivery; } | tee "$t/rows.tsv" >&2
    echo
    column -t -s $'\t' "$t/rows.tsv"

# The Debian test image's figures (see bench), one `figure<TAB>value` line each
bench-debian:
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release -q
    export SOURCE_DATE_EPOCH=1700000000
    ob=$PWD/target/release/outpost
    t=$(mktemp -d /var/tmp/outpost-bench.XXXXXX)
    trap 'rm -rf "$t"' EXIT
    cp -a layers images qemu-tests "$t/"
    img=$t/images/debian-base.toml
    secs() { python3 -c "import time; print(f'{time.time():.2f}')"; }
    sub() { python3 -c "print(f'{$2 - $1:.1f}')"; }
    a=$(secs); $ob build "$img" --out "$t/out" --cache "$t/cache" --json > "$t/cold.json"; b=$(secs)
    # A comment in the top layer's page template: a real change to one file of it.
    echo "<!-- bench -->" >> "$t/layers/status-page/files/usr/lib/outpost/status-page.html.tera"
    $ob build "$img" --out "$t/out2" --cache "$t/cache" --json > "$t/warm.json"; c=$(secs)
    # Cold again, with only the package pool of the first build kept.
    mv "$t/cache" "$t/cache-first"; mkdir -p "$t/cache"; mv "$t/cache-first/debs" "$t/cache/"
    c1=$(secs); $ob build "$img" --out "$t/out3" --cache "$t/cache" > /dev/null; c2=$(secs)
    pkgs=$($ob plan "$img" --json | python3 -c "import json,sys; print(','.join(p for l in json.load(sys.stdin)['layers'] for p in l['packages']))")
    mmdebstrap --mode=root --variant=minbase --quiet --include="$pkgs" \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
      bookworm "$t/bare"; d=$(secs)
    printf 'debian-base: cold build\t%s s\n' "$(sub $a $b)"
    printf 'debian-base: warm rebuild, one file of the top layer changed\t%s s\n' "$(sub $b $c)"
    printf 'debian-base: cold build, package pool kept\t%s s\n' "$(sub $c1 $c2)"
    printf 'debian-base: bare mmdebstrap of the same packages\t%s s (cold build / bare = %s)\n' "$(sub $c2 $d)" "$(python3 -c "print(f'{($b - $a) / ($d - $c2):.2f}')")"
    python3 - "$t" <<'PY'
    import json, os, sys
    t = sys.argv[1]
    cold = json.load(open(t + "/cold.json"))
    for st, s in cold["stages"]:
        print(f"debian-base: cold, {st}\t{s:.1f} s")
    for name, s in cold["layer_seconds"]:
        print(f"debian-base: cold, layer {name}\t{s:.1f} s")
    for f in ["debian-base.raw", "debian-base.qcow2"]:
        st = os.stat(f"{t}/out/{f}")
        print(f"{f}\t{st.st_blocks * 512 / 2**20:.1f} MiB allocated ({st.st_size / 2**20:.1f} MiB apparent)")
    pool = [os.path.join(r, n) for r, _, ns in os.walk(t + "/cache/debs/sha256") for n in ns]
    print(f"package pool\t{len(pool)} packages, {sum(map(os.path.getsize, pool)) / 2**20:.1f} MiB")
    PY
    # 100 sites personalized from the cold build's raw image
    for i in $(seq 1 100); do sed "s/clinic-kisumu/clinic-$i/" sites/example-static.toml > "$t/site-$i.toml"; done
    e=$(secs); $ob personalize "$t/out/debian-base.raw" --site "$t/site-1.toml" --out "$t/one.raw" > /dev/null; f=$(secs)
    for i in $(seq 1 100); do $ob personalize "$t/out/debian-base.raw" --site "$t/site-$i.toml" --out "$t/site.raw" > /dev/null; done; g=$(secs)
    printf 'personalize, raw to raw (%s MiB)\t%s s for one site, %s s for 100\n' "$(( $(stat -c %s "$t/out/debian-base.raw") >> 20 ))" "$(sub $e $f)" "$(sub $f $g)"
    # Whole-image encryption of the raw output, and decryption back
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$t/image.key"
    h=$(secs); $ob build "$img" --out "$t/out-enc" --cache "$t/cache" --encrypt-key-file "$t/image.key" > /dev/null; i=$(secs)
    $ob decrypt "$t/out-enc/debian-base.raw.luks" --key-file "$t/image.key" --out "$t/decrypted.raw" > /dev/null; j=$(secs)
    cmp "$t/decrypted.raw" "$t/out-enc/debian-base.raw"
    printf 'encrypted output\tbuild with --encrypt-key-file %s s (cached layers), decrypt %s s, round trip identical\n' "$(sub $h $i)" "$(sub $i $j)"
    # First boot and a later one, by data partition size
    for size in 1G 10G; do
      sed "s/^data = .*/data = \"$size\"/" "$img" > "$t/images/bench-$size.toml"
      printf '%s\n' 'version = 1' "image = \"../images/bench-$size.toml\"" 'timeout = 900' 'verdict = "OUTPOST-VERDICT: running"' \
        '[[http]]' 'port = 80' 'path = "/"' '[[reboot]]' 'verdict = "OUTPOST-VERDICT: running"' '[[reboot.http]]' 'port = 80' 'path = "/"' > "$t/qemu-tests/bench-$size.toml"
      if ! $ob test "$t/qemu-tests/bench-$size.toml" --cache "$t/cache" --work "$t/vm-$size" --json > "$t/vm-$size.json"; then
        printf 'debian-base %s data\tTHE BOOT TEST FAILED: %s\n' "$size" "$(python3 -c "import json,sys; print('; '.join(json.load(open(sys.argv[1]))['failed']))" "$t/vm-$size.json" || true)"
        continue
      fi
      prep=$(grep -a -o 'prepared in [0-9.]* s' "$t/vm-$size/vm/console.log" || echo "?")
      unlock=$(grep -a -o 'unlocked (tpm2) in [0-9.]* s' "$t/vm-$size/vm/console-2.log" || echo "?")
      python3 - "$t/vm-$size.json" "$size" "$prep" "$unlock" <<'PY'
    import json, re, sys
    r = json.load(open(sys.argv[1])); size = sys.argv[2]
    verdicts = dict(re.match(r"boot (\d): verdict .* after (\d+) s", p).groups() for p in r["passed"] if re.match(r"boot \d: verdict", p))
    answers = {m[1]: m[2] for m in (re.match(r"boot (\d): wall clock: .*GET \S+ answered after ([\d.]+) s", x) for x in r.get("timings", [])) if m}
    for n, name in [("1", "first boot"), ("2", "later boot")]:
        print(f"debian-base {size} data, {name} (TCG)\tstatus page answers {answers.get(n, '?')} s, verdict {verdicts.get(n, '?')} s after power-on")
    print(f"debian-base {size} data, encryption\tfirst boot {sys.argv[3]}; next boot {sys.argv[4]}")
    PY
    done

# The PACS stack (three container images built from packages): build time it adds cold and warm,
# size it adds, and under QEMU the time from power-on to Orthanc answering, first and later boots
# (one `figure<TAB>value` line each, as in bench)
bench-pacs:
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release -q
    export SOURCE_DATE_EPOCH=1700000000
    ob=$PWD/target/release/outpost
    t=$(mktemp -d /var/tmp/outpost-bench-pacs.XXXXXX)
    trap 'rm -rf "$t"' EXIT
    cp -a layers images qemu-tests sites "$t/"
    # The same image without its stack: what the stack adds is the difference.
    sed 's/"orthanc-pacs", //' images/pacs-clinic.toml > "$t/images/no-pacs.toml"
    if cmp -s images/pacs-clinic.toml "$t/images/no-pacs.toml"; then echo "bench-pacs: the sed no longer takes orthanc-pacs out of images/pacs-clinic.toml's layers; update the recipe" >&2; exit 1; fi
    secs() { python3 -c "import time; print(f'{time.time():.2f}')"; }
    a=$(secs); $ob build "$t/images/no-pacs.toml" --out "$t/out-none" --cache "$t/cache" --json > /dev/null; b=$(secs)
    $ob build "$t/images/pacs-clinic.toml" --out "$t/out-pacs" --cache "$t/cache" --json > "$t/cold.json"; c=$(secs)
    $ob build "$t/images/no-pacs.toml" --out "$t/out-none2" --cache "$t/cache" > /dev/null; d=$(secs)
    $ob build "$t/images/pacs-clinic.toml" --out "$t/out-pacs2" --cache "$t/cache" > /dev/null; e=$(secs)
    # The scenario personalizes with a deployment CA: a throwaway one.
    $ob ca init "$t/ca" > /dev/null
    $ob test "$t/qemu-tests/pacs-clinic.toml" --image "$t/out-pacs/pacs-clinic.qcow2" --cache "$t/cache" --work "$t/vm" --ca "$t/ca" --json > "$t/test.json"
    python3 - "$a" "$b" "$c" "$d" "$e" "$t" <<'PY'
    import json, os, re, sys
    a, b, c, d, e = map(float, sys.argv[1:6]); t = sys.argv[6]
    # The build with the stack reuses every layer the one without it made; what it takes beyond a
    # fully cached build of the image without it is what the stack adds.
    print(f"PACS stack, cold\t+{(c - b) - (d - c):.1f} s (image without it: {b - a:.1f} s from a cold cache; then with it: {c - b:.1f} s)")
    print(f"PACS stack, warm\t+{(e - d) - (d - c):.1f} s (fully cached: without {d - c:.1f} s, with {e - d:.1f} s)")
    for st, s in json.load(open(t + "/cold.json"))["stages"]:
        print(f"PACS, cold with the stack, {st}\t{s:.1f} s")
    for f in ["raw", "qcow2"]:
        none = os.stat(f"{t}/out-none/no-pacs.{f}"); pacs = os.stat(f"{t}/out-pacs/pacs-clinic.{f}")
        print(f"PACS {f}\twithout {none.st_blocks * 512 / 2**20:.1f} MiB, with {pacs.st_blocks * 512 / 2**20:.1f} MiB allocated (+{(pacs.st_blocks - none.st_blocks) * 512 / 2**20:.1f} MiB)")
    # Each image is the shared Essential base layer and its own layer (compressed sizes).
    for c in json.load(open(f"{t}/out-pacs/manifest.json"))["containers"]:
        layout = f"{t}/cache/oci/images/" + c["digest"].replace(":", "-")
        blob = lambda d: f"{layout}/blobs/" + d.replace(":", "/")
        index = json.load(open(f"{layout}/index.json"))
        sizes = [l["size"] / 2**20 for l in json.load(open(blob(index["manifests"][0]["digest"])))["layers"]]
        print(f"PACS container {c['name']}\t{sizes[-1]:.1f} MiB own layer on {sum(sizes[:-1]):.1f} MiB of shared base, {len(c['packages'])} packages")
    r = json.load(open(t + "/test.json"))
    answers = {m[1]: m[2] for m in (re.match(r"boot (\d): wall clock: .*GET \S+ answered after ([\d.]+) s", x) for x in r.get("timings", [])) if m}
    for p in r["passed"]:
        m = re.match(r"boot (\d): verdict .* after (\d+) s", p)
        if m:
            print(f"PACS boot {m[1]} (TCG)\tOrthanc answers through nginx {answers.get(m[1], '?')} s, verdict {m[2]} s after power-on")
    PY

# The clinic PC image's delivery outputs: sizes against the raw disk, the ISO step of the build,
# `outpost flash` into a file with and without the block map, and an unattended install under
# QEMU (power-on to installed, the installer's own write-and-verify time, the installed first boot)
bench-delivery:
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release -q
    export SOURCE_DATE_EPOCH=1700000000
    ob=$PWD/target/release/outpost
    t=$(mktemp -d /var/tmp/outpost-bench-delivery.XXXXXX)
    trap 'rm -rf "$t"' EXIT
    $ob build images/clinic-pc.toml --out "$t/out" --cache "$t/cache" --json > "$t/cold.json"
    $ob build images/clinic-pc.toml --out "$t/out2" --cache "$t/cache" --json > "$t/warm.json"
    truncate -s 2G "$t/stick.img"
    $ob flash "$t/out/clinic-pc.raw" "$t/stick.img" --json > "$t/flash-bmap.json"
    $ob flash "$t/out/clinic-pc.raw" "$t/stick.img" --no-bmap --json > "$t/flash-all.json"
    $ob test qemu-tests/install.toml --image "$t/out/clinic-pc.iso" --cache "$t/cache" --work "$t/vm" --json > "$t/install.json"
    python3 - "$t" <<'PY'
    import json, re, sys
    t = sys.argv[1]
    for name in ["cold", "warm"]:
        r = json.load(open(f"{t}/{name}.json"))
        total = sum(s for _, s in r["stages"]); iso = dict(r["stages"]).get("writing the installer ISO", 0)
        print(f"clinic-pc {name} build\t{total:.1f} s, of which the installer ISO {iso:.1f} s")
    sizes = {o["file"]: o["size"] for o in json.load(open(f"{t}/cold.json"))["outputs"]}
    raw = sizes["clinic-pc.raw"]
    for f, n in sizes.items():
        print(f"{f}\t{n / 2**20:.1f} MiB ({100 * n / raw:.0f} % of raw)")
    for name in ["flash-bmap", "flash-all"]:
        r = json.load(open(f"{t}/{name}.json"))
        print(f"{name}\t{r['written_bytes'] / 2**20:.1f} MiB in {r['write_seconds']:.1f} s ({r['write_mb_per_s']:.0f} MB/s), verified in {r['verify_seconds']:.1f} s")
    for p in json.load(open(f"{t}/install.json"))["passed"]:
        m = re.search(r"checked, in (\d+) s.* after (\d+) s", p)
        if m:
            print(f"install (TCG)\tpower-on to installed {m[2]} s, writing and verifying {m[1]} s")
        m = re.match(r"verdict .* after (\d+) s", p)
        if m:
            print(f"installed disk (TCG)\tfirst boot to the verdict {m[1]} s")
    PY

# 100 power cuts on the Debian test appliance (seeded; about 2 hours under TCG), signed with keys
# made for the run, the data key sealed to its signed PCR policy: boots that needed a human,
# acknowledged records lost, median and worst time from power-on to the application, and the
# TPM's dictionary-attack counter after the cuts
power-cuts count="100":
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release -q
    export SOURCE_DATE_EPOCH=1700000000
    t=$(mktemp -d /var/tmp/outpost-cuts.XXXXXX)
    trap 'rm -rf "$t"' EXIT
    target/release/outpost keys init "$t/keys" > /dev/null
    OUTPOST_POWER_CUTS={{count}} target/release/outpost test qemu-tests/power-cut.toml --keys "$t/keys" --work "$t" --json > "$t/report.json" || true
    python3 - "$t" <<'PY'
    import json, sys
    t = sys.argv[1]
    r = json.load(open(t + "/report.json"))
    s = json.load(open(t + "/vm/power-cuts.json"))
    print(f"power cuts        {s['cuts']} ({s['cuts_during_boot']} during boot, {s['cuts_while_writing']} while writing)")
    print(f"records           {s['records_acknowledged']} acknowledged, {s['records_lost']} lost")
    print(f"needed a human    {s['boots_needing_a_human']} boots")
    print(f"power-on to app   median {s['answer_median']:.0f} s, worst {s['answer_worst']:.0f} s (TCG)")
    print(f"e2fsck repaired   at {s['fsck_repairs']} boots")
    for p in r["passed"]:
        if "dictionary-attack" in p or "lockout" in p:
            print("TPM              ", p)
    for f in r["failed"]:
        print("FAILED", f)
    sys.exit(1 if r["failed"] else 0)
    PY

# Power cuts while an update is written: each round a fresh appliance (release 1, Secure Boot on)
# gets the delta bundle to release 2 on a stick and loses power at a seeded random moment. The
# first four rounds fall in the late steps (after 80% of the root: its hash tree and the partition
# table; in the UKI; at its end; just after staging), the others anywhere from the check of the
# bundle to 30 s after it (the whole apply, ~25 s under TCG). Each must then come up (release 1
# or 2, the stick still in) and reach release 2. Prints where each cut fell and what came up.
update-cuts count="10" seed="20261130":
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release -q
    export SOURCE_DATE_EPOCH=1700000000
    t=$(mktemp -d /var/tmp/outpost-update-cuts.XXXXXX)
    trap 'rm -rf "$t"' EXIT
    ob=$PWD/target/release/outpost
    # Keys whose db key is the one the firmware's test variables enrol (ovmf's "snakeoil").
    $ob keys init "$t/keys" > /dev/null
    openssl pkey -in /usr/share/ovmf/PkKek-1-snakeoil.key -passin pass:snakeoil -out "$t/keys/secure-boot-db.key"
    chmod 600 "$t/keys/secure-boot-db.key"
    cp /usr/share/ovmf/PkKek-1-snakeoil.pem "$t/keys/secure-boot-db.crt"
    openssl x509 -outform DER -in "$t/keys/secure-boot-db.crt" -out "$t/keys/secure-boot-db.cer"
    files=()
    for i in $(seq 1 {{count}}); do
      read -r at delay < <(python3 -c "
    import random
    r = random.Random({{seed}} * 1000 + $i)
    late = [('update: 80% written', 0.5, 4), ('update: 90% written', 0, 1), ('update: 100% written', 0, 0.3), ('update: release 2 staged', 0, 0.2)]
    at, lo, hi = late[$i - 1] if $i <= len(late) else ('update: release 2 of debian-base checked', 0, 30)
    print(at.replace(' ', '_'), f'{r.uniform(lo, hi):.1f}')")
      at=${at//_/ }
      f="$t/cut-$i.toml"
      printf '%s\n' 'version = 1' "image = \"$PWD/images/debian-base.toml\"" 'timeout = 600' 'secure-boot = true' \
        "update-image = \"$PWD/images/debian-base-next.toml\"" 'verdict = "OUTPOST-VERDICT: running"' \
        '[[reboot]]' 'update = true' "power-cut-at = \"$at\"" "power-cut-delay = $delay" \
        '[[reboot]]' 'update = true' 'verdict = "OUTPOST-VERDICT: running"' \
        '[[reboot.command]]' "run = \"until grep -Eq 'staged|idle' /run/outpost/update.json 2>/dev/null; do sleep 2; done; cat /usr/lib/outpost/release.json\"" \
        '[[reboot]]' 'verdict = "OUTPOST-VERDICT: running"' \
        '[[reboot.command]]' 'run = "cat /usr/lib/outpost/release.json"' "expect = '\"release\": \"2\"'" > "$f"
      files+=("$f")
    done
    $ob test "${files[@]}" --keys "$t/keys" --work "$t/work" --json > "$t/report.json" || true
    python3 - "$t" <<'PY'
    import json, re, sys, glob
    t = sys.argv[1]
    reports = json.load(open(t + "/report.json"))["scenarios"]
    ok = 0
    for r in reports:
        cut = next((p for p in r["passed"] if "power cut" in p), "?")
        after = [l for l in open(glob.glob(f"{t}/work/{r['scenario']}/vm/console-2.log")[0], errors="replace") if "update:" in l]
        last = re.sub(r"^.*outpost: ", "", after[-1].strip()) if after else "(nothing of the update on the console)"
        up = next((p for p in r["passed"] if p.startswith("boot 3: `until")), "")
        came = "release 2" if '"2"' in up else "release 1" if '"1"' in up else "?"
        print(f"{r['scenario']:<8} {cut.split(': ', 1)[-1]}\n         last line before the cut: {last}\n         came up on {came}; " + ("reached release 2" if not r["failed"] else "FAILED: " + "; ".join(r["failed"])))
        ok += not r["failed"]
    print(f"update cuts       {ok} of {len(reports)} rounds came up and reached release 2")
    sys.exit(0 if ok == len(reports) else 1)
    PY
