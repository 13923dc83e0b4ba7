"""Operations tools around runs: set-up, demo data, the local Flink cluster (not run on workers)."""
