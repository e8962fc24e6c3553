"""shutdown-gpu-lambda: idle stop / work-waiting start for the GPU instance(s). The rule is core/idle.py."""
