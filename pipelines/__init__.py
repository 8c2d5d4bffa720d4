"""The V2I Kubeflow pipeline (pipeline.py), its compiler entry point (compile.py) and a local runner (run_local.py)."""
