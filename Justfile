# Thin recipes; CI runs the same commands as the README.

# Build the demo appliance (Ubuntu 24.04) into out/demo
build image="images/demo.toml":
    cargo run --release -- build {{image}} --out out/$(basename {{image}} .toml)

# Unit and tool tests: seconds
test:
    cargo test --release

# Build the Debian test image twice, check it is byte-identical, and boot it under QEMU
boot-test:
    cargo test --release -- --ignored --nocapture

# Cold and warm build times against a bare mmdebstrap, and output sizes
bench:
    cargo build --release
    bash docs/bench.sh
