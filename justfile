# Shortcuts. Every recipe is a plain cargo command written in README.md; `just` is optional.

# The main example.
demo:
    cargo run --example orders

# The test suite.
test:
    cargo test --workspace

# Benchmarks against tokio-util, ratios in one run (see docs/performance.md).
bench:
    cargo bench -p taskscope-benches

# Everything CI runs.
ci:
    bash .ci/run
