"""The repository as a whole: docs, README, examples, benchmarks, demo, layering, tooling."""
