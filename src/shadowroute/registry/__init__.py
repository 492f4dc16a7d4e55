"""The model registry: verdicts written as model version tags (and an alias moved when the
config says so), and registry versions read for lineage. MLflow's REST API (docs/registry.md)."""
