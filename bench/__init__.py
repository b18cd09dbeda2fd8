"""whatsdesk's benchmarks: `make bench` (quick pass) or `make bench FULL=1` (full sizes);
they write docs/benchmarks.md and its plots (docs/bench-*.svg)."""
