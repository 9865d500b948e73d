"""The trace: one immutable record of how every token was routed (types), its files (io: JSON and Parquet), the
checks every file passes before it becomes a trace (checks), and made-up traces for tests and benchmarks
(synthetic). numpy and pyarrow only: reading a trace never imports torch."""
