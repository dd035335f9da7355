"""The per-file stages that turn one scan into outputs: instances -> plan -> pipeline (process one file)."""
